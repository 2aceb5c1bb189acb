import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_retrieval

from fixclip.eval.benchmarks import RetrievalBenchmark
from fixclip.eval.metrics import class_embeddings, retrieval_ranks, retrieval_recall, zero_shot_accuracy


def _axes(*dims):
    """Unit vectors along the given axes of R^4."""
    return torch.eye(4)[list(dims)]


def test_recall_with_several_captions_per_image_has_known_answers():
    images = _axes(0, 1, 2)
    # Texts 0, 1 describe image 0; text 2 image 1; text 3 image 2. Text 1 points at image 1 instead (a miss at
    # rank 1 that recovers at rank 2); text 3 is closest to image 0, then image 2.
    texts = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0.3, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0.5, 0]]), dim=-1)
    pair_text, pair_image = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2])
    i2t, t2i = retrieval_ranks(images, texts, pair_text, pair_image)
    # Image 0: text 0 first. Image 1: text 2 (1.0) beats text 1 (0.96). Image 2: text 3 is its only caption and
    # the only text with any component on axis 2.
    assert i2t.above.tolist() == [0, 0, 0]
    assert t2i.above.tolist() == [0, 1, 0, 1]
    metrics = retrieval_recall(images, texts, pair_text, pair_image, ks=(1, 2))
    assert metrics == {"i2t_R@1": 100.0, "i2t_R@2": 100.0, "t2i_R@1": 50.0, "t2i_R@2": 100.0}


def test_image_to_text_counts_an_image_once_any_caption_hits():
    images = _axes(0, 1)
    # Image 0's captions: text 0 (poor) and text 1 (good); text 2 is image 1's caption.
    texts = F.normalize(torch.tensor([[0.1, 1, 0, 0], [1, 0.2, 0, 0], [0.2, 1, 0, 0]]), dim=-1)
    i2t, _ = retrieval_ranks(images, texts, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    assert i2t.above[0] == 0
    texts[2] = F.normalize(torch.tensor([1, 0.05, 0, 0]), dim=0)  # now text 2 beats text 1 for image 0
    i2t, _ = retrieval_ranks(images, texts, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    assert i2t.above[0] == 1


def test_exact_ties_count_in_expectation_not_in_the_query_favour():
    """Two images whose texts embed identically (twins a model cannot tell apart) are a coin flip at R@1."""
    images = _axes(0, 1, 2)
    texts = F.normalize(torch.tensor([[1.0, 1, 0, 0], [1.0, 1, 0, 0], [0, 0, 1.0, 0]]), dim=-1)
    pair = torch.tensor([0, 1, 2])
    metrics = retrieval_recall(images, texts, pair, pair, ks=(1, 2))
    # Images 0 and 1: their own text ties with the twin's -> 0.5 at R@1, 1 at R@2; image 2 is certain.
    assert metrics["i2t_R@1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert metrics["t2i_R@1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert metrics["i2t_R@2"] == metrics["t2i_R@2"] == 100.0
    # Three tied candidates, one positive: 1/3 at R@1, 2/3 at R@2.
    i2t, _ = retrieval_ranks(_axes(0), F.normalize(torch.ones(3, 4), dim=-1), torch.tensor([0, 1, 2]),
                             torch.tensor([0, 0, 0]))
    assert i2t.tied_positives.tolist() == [3] and i2t.hit_probability(1).tolist() == [1.0]
    images = _axes(0, 1, 2)
    texts = F.normalize(torch.ones(3, 4), dim=-1)
    i2t, _ = retrieval_ranks(images, texts, pair, pair)
    assert i2t.hit_probability(1).tolist() == pytest.approx([1 / 3] * 3)
    assert i2t.hit_probability(2).tolist() == pytest.approx([2 / 3] * 3)


def test_every_image_and_text_needs_a_positive():
    with pytest.raises(ValueError, match="positive"):
        retrieval_ranks(_axes(0, 1), _axes(0, 1), torch.tensor([0]), torch.tensor([0]))


def test_duplicate_captions_become_one_text_positive_for_each_image(tmp_path):
    paths = []
    for name in "abc":
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(b"")
    bench = RetrievalBenchmark(paths, [["x", "y"], ["x"], ["z", "z"]])
    texts, pair_text, pair_image = bench.texts_and_pairs()
    assert texts == ["x", "y", "z"]
    assert sorted(zip(pair_text.tolist(), pair_image.tolist())) == [(0, 0), (0, 1), (1, 0), (2, 2)]
    assert bench.num_captions - len(texts) == 2


class _Embedded(torch.nn.Module):
    """A 'model' whose encoders look embeddings up by index: images are index tensors, texts index strings."""

    def __init__(self, image_emb, text_emb):
        super().__init__()
        self.image_emb, self.text_emb = image_emb, text_emb

    def encode_image(self, index):
        return self.image_emb[index]

    def encode_text(self, index):
        return self.text_emb[index]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_equals_clip_benchmark_on_the_same_embeddings(seed):
    gen = torch.Generator().manual_seed(seed)
    num_images, per_image, dim = 40, 5, 8
    image_emb = F.normalize(torch.randn(num_images, dim, generator=gen), dim=-1)
    # Distinct (deduplicated) captions near their image: noisy enough that R@1 is far from 0 and 100.
    text_emb = F.normalize(image_emb.repeat_interleave(per_image, 0) + 1.2 * torch.randn(num_images * per_image, dim,
                                                                                          generator=gen), dim=-1)
    text_ids = torch.arange(num_images * per_image).view(num_images, per_image)
    batches = [(torch.arange(s, s + 8), [[f"{int(t)}" for t in text_ids[i]] for i in range(s, s + 8)])
               for s in range(0, num_images, 8)]
    theirs = zeroshot_retrieval.evaluate(_Embedded(image_emb, text_emb), batches,
                                         lambda texts: torch.tensor([int(t) for t in texts]), "cpu", amp=False,
                                         recall_k_list=[1, 5, 10])
    ours = retrieval_recall(image_emb, text_emb, torch.arange(num_images * per_image),
                            torch.arange(num_images).repeat_interleave(per_image))
    for k in (1, 5, 10):
        assert ours[f"t2i_R@{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"], abs=1e-4)
        assert ours[f"i2t_R@{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"], abs=1e-4)
    assert 0 < ours["t2i_R@1"] < 100 and 0 < ours["i2t_R@1"] < 100


def test_zero_shot_accuracy_on_a_crafted_case():
    # Two prompts per class; class 2's prompts average to axis 2. Image 0 -> class 0, image 1 -> class 2 (true 1),
    # image 2 -> class 2, image 3 lies between classes 1 and 3 (closer to 3; true 1).
    prompts = torch.stack([_axes(0, 0), _axes(1, 1), F.normalize(torch.tensor([[0, 0.2, 1, 0], [0, -0.2, 1, 0]]),
                                                                 dim=-1), _axes(3, 3)])
    classes = class_embeddings(prompts)
    torch.testing.assert_close(classes[2], torch.tensor([0.0, 0, 1, 0]))
    images = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 0.1, 1, 0], [0, 0, 1, 0.1], [0, 0.6, 0, 0.8]]), dim=-1)
    labels = torch.tensor([0, 1, 2, 1])
    assert zero_shot_accuracy(images, classes, labels, ks=(1, 2, 4)) == {"top1": 50.0, "top2": 100.0, "top4": 100.0}
    assert zero_shot_accuracy(images, classes, torch.tensor([3, 3, 3, 3]), ks=(1, 2)) == {"top1": 25.0, "top2": 75.0}
