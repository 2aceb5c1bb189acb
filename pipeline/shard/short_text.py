"""The short text of a long caption by Long-CLIP's convention: its first sentence (shard stage and toy benchmark)."""


def first_sentence(text: str) -> str:
    """Up to and including the first sentence end ('.', '!' or '?' followed by a space or the end)."""
    text = " ".join(text.split())
    for i, char in enumerate(text):
        if char in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text
