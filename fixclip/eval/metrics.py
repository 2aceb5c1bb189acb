"""Retrieval R@k and zero-shot top-k accuracy from embeddings (no model, no data loading here).

Retrieval follows the CLIP-paper convention (and clip_benchmark's): a query scores 1 at k if at least one of its
positives is among its k best candidates. Image-to-text (I2T) queries are images and candidates texts; text-to-image
(T2I) the reverse. Positives are a relation, so an image may have several captions (COCO, Flickr30k) and a caption
may describe several images (a duplicated caption merged into one text). The rank of a query is the number of
candidates scoring strictly higher than its best positive. Candidates that tie with it exactly (texts that agree in
everything a 77-token model reads, say) are ordered uniformly at random, in expectation: R@k is the probability that
a positive lands in the top k, so a model that cannot tell two twins apart scores 50% on them at R@1, not the 100%
of resolving ties in the query's favour nor the arbitrary result of ``torch.topk``. Without ties both agree.
"""
from collections.abc import Sequence
from dataclasses import dataclass

import torch

RECALL_KS = (1, 5, 10)


def _percent(hits: torch.Tensor) -> float:
    return 100.0 * int(hits.sum()) / hits.numel()


def _best_positive_scores(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """For every row of ``scores``, the highest score among its positive columns (-inf without positives)."""
    best = torch.full((scores.shape[0],), float("-inf"), dtype=scores.dtype)
    return best.scatter_reduce(0, rows, scores[rows, cols], reduce="amax")


def _ranks(scores: torch.Tensor, best: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per row: how many candidates score strictly above the row's best positive (computed in row chunks)."""
    return torch.cat([(scores[i:i + chunk] > best[i:i + chunk, None]).sum(dim=1)
                      for i in range(0, scores.shape[0], chunk)])


def _ties(scores: torch.Tensor, best: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
          chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: positives scoring exactly the best positive's score, and other candidates scoring it."""
    equal = torch.cat([(scores[i:i + chunk] == best[i:i + chunk, None]).sum(dim=1)
                       for i in range(0, scores.shape[0], chunk)])
    positive = torch.zeros_like(equal).scatter_add(0, rows, (scores[rows, cols] == best[rows]).long())
    return positive, equal - positive


@dataclass(frozen=True)
class Ranks:
    """Per query: candidates strictly above its best positive, and the tie at that score (positives, others)."""

    above: torch.Tensor
    tied_positives: torch.Tensor
    tied_others: torch.Tensor

    def hit_probability(self, k: int) -> torch.Tensor:
        """P(a positive is in the top k) when the tied group is ordered uniformly at random."""
        slots = (k - self.above).clamp(min=0)
        miss = torch.ones(self.above.shape, dtype=torch.float64)
        for i in range(k):  # P(the first `slots` places of the tied group all go to non-positives)
            draws = (slots > i) & (self.tied_others >= i)  # past the last non-positive the miss is already 0
            others = (self.tied_others - i).clamp(min=0).double()
            total = (self.tied_others + self.tied_positives - i).double()
            miss = torch.where(draws, miss * others / total, miss)
        return 1.0 - miss


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, pair_text: torch.Tensor,
                    pair_image: torch.Tensor, chunk: int = 4096) -> tuple[Ranks, Ranks]:
    """Ranks of every image's best caption (I2T) and every text's best image (T2I), with their ties.

    ``image_emb`` [I, D] and ``text_emb`` [T, D] are L2-normalised; positive pairs are given as two index vectors
    (text j describes image i for every k with pair_text[k] = j, pair_image[k] = i). Every image and every text needs
    at least one positive."""
    scores = text_emb.float() @ image_emb.float().T  # [T, I]
    pair_text, pair_image = pair_text.long(), pair_image.long()
    if torch.unique(pair_text).numel() != scores.shape[0] or torch.unique(pair_image).numel() != scores.shape[1]:
        raise ValueError("every image and every text needs at least one positive pair")

    def ranks(table: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> Ranks:
        best = _best_positive_scores(table, rows, cols)
        return Ranks(_ranks(table, best, chunk), *_ties(table, best, rows, cols, chunk))

    return ranks(scores.T.contiguous(), pair_image, pair_text), ranks(scores, pair_text, pair_image)


def recall_from_ranks(ranks: Ranks, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Percent of queries with a positive within the top k (expected over the order of exact ties)."""
    return {f"R@{k}": 100.0 * float(ranks.hit_probability(k).mean()) for k in ks}


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, pair_text: torch.Tensor,
                     pair_image: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``{"i2t_R@1": .., "t2i_R@1": .., ...}`` in percent."""
    i2t, t2i = retrieval_ranks(image_emb, text_emb, pair_text, pair_image)
    out = {f"i2t_{name}": value for name, value in recall_from_ranks(i2t, ks).items()}
    out.update({f"t2i_{name}": value for name, value in recall_from_ranks(t2i, ks).items()})
    return out


def class_embeddings(template_emb: torch.Tensor) -> torch.Tensor:
    """[C, P, D] normalised embeddings of P prompts per class -> [C, D]: mean over prompts, re-normalised
    (the prompt ensembling of Radford et al. 2021, Sec. 3.1.4)."""
    return torch.nn.functional.normalize(template_emb.float().mean(dim=1), dim=-1)


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` in percent; a k larger than the number of classes counts as that number.

    The true class's rank counts classes scoring strictly higher, as in ``retrieval_ranks``."""
    logits = image_emb.float() @ class_emb.float().T  # [N, C]
    true = logits.gather(1, labels.long()[:, None])
    ranks = (logits > true).sum(dim=1)
    return {f"top{k}": _percent(ranks < k) for k in ks}
