"""The `evaluate:` section of params.yaml: models, benchmarks (one entry per benchmark, `kind` picks the adapter in
fixclip/eval/benchmarks, whose modules define the entries), the held-out toy benchmark, batching. Protocols:
fixclip/eval/benchmarks/README.md."""
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fixclip.eval.benchmarks import BenchmarkEntry
from fixclip.eval.benchmarks.entry import NAME
from fixclip.eval.benchmarks.toy import ToyEntry
from pipeline.params.section import Section

class ToyBenchmarkParams(Section):
    """Held-out toy benchmark, written to data/toy_benchmark/: toy-world scenes (same world shape as source.toyworld, a different seed): the test split, which the
    tables report, and a development split of the same shape from `dev_seed`, on which set-up choices are made."""

    seed: int = 1_000_003
    """the test split the tables report; must differ from source.toyworld.seed (checked)"""
    dev_seed: int = 2_000_003
    """The development split (data/toy_benchmark_dev, metrics/eval_dev.json): tune set-up choices on it."""
    num_images: int = Field(500, ge=2, multiple_of=2)
    """Twin pairs: scene 2k+1 = scene 2k with its last-described object changed (multi-object scenes for long and
    short retrieval)."""
    min_objects: int = Field(5, ge=1)
    """Retrieval scenes have 5..max_objects objects: every description > 77 tokens
    (min_objects..source.toyworld.max_objects)."""
    num_layout_images: int = Field(500, ge=0, multiple_of=2)
    """Layout twins: scene 2k+1 = scene 2k with two objects swapped between cells (binding)."""
    num_short_scene_images: int = Field(500, ge=0)
    """one- and two-object scenes with their complete description (< 77 tokens)"""
    num_classification_images: int = Field(480, ge=1)
    """single-object scenes, 48 classes (labels "<colour> <shape>")"""
    short_text: Literal["alt_text", "first_sentence"] = "alt_text"
    """alt_text | first_sentence (first sentences repeat heavily in the toy world)"""
    templates: list[str] = Field(["a photo of a {c}.", "a {c}.", "a drawing of a {c}."], min_length=1)
    """Zero-shot prompts, each with {c}."""

    @model_validator(mode="after")
    def _templates_have_slot(self):
        if any("{c}" not in t for t in self.templates):
            raise ValueError("templates: every template needs '{c}'")
        if self.dev_seed == self.seed:
            raise ValueError(f"dev_seed: equals seed ({self.seed}): the development split must differ from the test "
                             "split")
        return self

    def development(self) -> "ToyBenchmarkParams":
        """The development split's params: the same benchmark rendered from `dev_seed`."""
        return self.with_(seed=self.dev_seed, dev_seed=self.seed)


class ExtraModel(Section):
    """A checkpoint scored beside base and trained: any format `fixclip.load` reads (OpenAI archive, open_clip hub
    folder, transformers CLIPModel folder, Long-CLIP checkpoint, a model folder of ours). The evaluate stage also
    checks that the path lies under the folder DVC tracks for it (stages/evaluate.py, check_extra_models)."""

    name: str = NAME
    """The model's row name in the tables."""
    path: str
    """The checkpoint, under models/extra/ (the folder DVC tracks as a dep of evaluate)."""

    @model_validator(mode="after")
    def _name_free_and_path_found(self):
        if self.name in ("base", "trained"):
            raise ValueError(f"name: {self.name!r} is taken by the base or the trained model")
        if not Path(self.path).exists():
            raise ValueError(f"path: not found: {self.path!r}")
        return self


def _default_benchmarks() -> list:
    return [ToyEntry(kind="toy", name=name, task=task, **options) for name, task, options in (
        ("toy_long", "long_retrieval", {}), ("toy_long_cut77", "long_retrieval", {"max_text_tokens": 77}),
        ("toy_layout", "layout_retrieval", {}), ("toy_short", "short_retrieval", {}),
        ("toy_short_scenes", "short_scene_retrieval", {}), ("toy_zeroshot", "zeroshot", {}),
        ("toy_zeroshot_colour", "zeroshot_colour", {}), ("toy_zeroshot_shape", "zeroshot_shape", {}))]


class EvaluateParams(Section):
    """The base model evaluated is `train.base_model` (the CLIP that training starts from)."""

    trained_model: str | None = "models/fixclip"
    """Train stage's folder (fixclip.json + model.json + weights.pt); null: base only."""
    extra_models: list[ExtraModel] = []
    """More checkpoints scored alike, under models/extra/ (its README), e.g. [{name: longclip-B, path:
    models/extra/longclip-B.pt}]."""
    toy: ToyBenchmarkParams = ToyBenchmarkParams()
    benchmarks: list[BenchmarkEntry] = Field(default_factory=_default_benchmarks, min_length=1)
    """One entry per reported benchmark; kind picks the adapter, other keys are its options."""
    batch_size: int = Field(64, ge=1)
    """Images / texts per forward pass."""
    workers: int = Field(0, ge=0)
    """DataLoader processes decoding images"""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads; null: torch's default"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Auto (the first GPU if any, else CPU) | cpu | cuda: where the models encode; embeddings are float32 either
    way."""

    @model_validator(mode="after")
    def _unique_names(self):
        for key, entries in (("benchmarks", self.benchmarks), ("extra_models", self.extra_models)):
            names = [entry.name for entry in entries]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{key}: duplicate names {duplicates}")
        sizes = {"layout_retrieval": "num_layout_images", "short_scene_retrieval": "num_short_scene_images"}
        for entry in self.benchmarks:
            if entry.kind == "toy" and entry.task in sizes and not getattr(self.toy, sizes[entry.task]):
                raise ValueError(f"toy.{sizes[entry.task]}: 0, but benchmark {entry.name!r} reads that set")
        return self
