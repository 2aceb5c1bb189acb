"""Caption quality filters: each caption gets exactly one status, `ok` or the first rejection class it falls in."""
import re

from pipeline.params.caption import Filters

REJECTIONS = ("empty", "refusal", "too_short", "repetitive", "truncated")
STATUSES = ("ok", *REJECTIONS, "failed")


def repetition_ratio(words: list[str], n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct, near 1 = one phrase looped)."""
    ngrams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not ngrams:
        return 0.0
    return 1.0 - len(set(ngrams)) / len(ngrams)


class CaptionFilter:
    """Classifies a caption; compiled once per stage run."""

    def __init__(self, filters: Filters):
        self.filters = filters
        self.refusals = [re.compile(p, re.IGNORECASE) for p in filters.refusal_patterns]

    def classify(self, text: str, finish_reason: str | None) -> str:
        words = text.lower().split()
        if not words:
            return "empty"
        if any(p.search(text) for p in self.refusals):
            return "refusal"
        if len(words) < self.filters.min_words:
            return "too_short"
        if repetition_ratio(words, self.filters.repetition_ngram) > self.filters.max_repetition:
            return "repetitive"
        if finish_reason == "length" and not self.filters.keep_truncated:
            return "truncated"
        return "ok"
