"""The model card every export folder carries (README.md), generated from the run that made the model.

Its header is the metadata the Hugging Face Hub reads (library_name, tags, pipeline_tag, base_model, datasets,
metrics and a model-index with each benchmark's scores); its body says what the model was trained on and how, what
it scores (the numbers of metrics/eval.json, nothing typed by hand) and its limits. docs/export.md, "Model card".
"""
import json
from dataclasses import dataclass, field

import yaml

LIBRARIES = {"open_clip": "open_clip", "transformers": "transformers"}
LOADING = {
    "open_clip": ('model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{path}")\n'
                  'tokenizer = open_clip.get_tokenizer("local-dir:{path}")  # 248 tokens'),
    "transformers": ('model = CLIPModel.from_pretrained("{path}")\n'
                     'processor = CLIPProcessor.from_pretrained("{path}")  # 248 tokens'),
}
METHOD_NAMES = {"fixclip": "FIX-CLIP (ICCV 2025)", "longclip": "Long-CLIP (ECCV 2024)", "holistic": "Holistic CLIP"}


@dataclass
class RunFacts:
    """What the run knows about a model: how it was made, and what evaluate measured (empty if it did not)."""

    method: str
    method_params: dict
    train: dict
    base_model: str
    dataset: str  # a short name (the Hub's datasets field)
    data: str  # what it is, in a sentence
    captioner: str
    scores: dict = field(default_factory=dict)  # {row: {benchmark: [I2T, T2I] R@1 or top-1}}
    exported_row: str = "trained"  # the evaluate row that scores what the export holds
    image_tower: str = ""


def _rounded(value: float) -> float:
    """A score as the Hub shows it (two decimals), the same number as in metrics/eval.json."""
    return round(value, 2)


def _score_text(value) -> str:
    return f"{value[0]:.1f} / {value[1]:.1f}" if isinstance(value, list) else f"{value:.1f}"


def _model_index(name: str, facts: RunFacts) -> list[dict]:
    results = []
    for benchmark, value in facts.scores.get(facts.exported_row, {}).items():
        if isinstance(value, list):
            task = {"type": "image-text-retrieval", "name": "Image-text retrieval"}
            metrics = [{"type": "recall@1", "name": "image-to-text R@1", "value": _rounded(value[0])},
                       {"type": "recall@1", "name": "text-to-image R@1", "value": _rounded(value[1])}]
        else:
            task = {"type": "zero-shot-image-classification", "name": "Zero-shot image classification"}
            metrics = [{"type": "accuracy", "name": "top-1", "value": _rounded(value)}]
        results.append({"task": task, "dataset": {"name": benchmark, "type": benchmark}, "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def header(library: str, name: str, facts: RunFacts) -> dict:
    """The Hub's metadata: what the model is, which library loads it, and its scores."""
    meta = {"library_name": LIBRARIES[library], "pipeline_tag": "zero-shot-image-classification",
            "tags": ["clip", facts.method, "long-text", "image-text-retrieval", "zero-shot-image-classification"],
            "base_model": facts.base_model, "datasets": [facts.dataset], "metrics": ["recall", "accuracy"]}
    index = _model_index(name, facts)
    if index:
        meta["model-index"] = index
    return meta


def _scores_table(facts: RunFacts) -> list[str]:
    rows = [row for row in (facts.exported_row, "trained", "base") if row in facts.scores]
    rows = list(dict.fromkeys(rows))
    if not rows:
        return ["The evaluate stage did not score this model folder in this run (`evaluate.trained_model` names "
                "another), so no score is given here."]
    labels = {facts.exported_row: "this export", "trained": "the model with its regional prompts (fixclip.load)",
              "base": "the base CLIP it was fine-tuned from"}
    benchmarks = list(facts.scores[rows[0]])
    lines = ["| benchmark | " + " | ".join(labels[row] for row in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for benchmark in benchmarks:
        lines.append(f"| {benchmark} | " + " | ".join(_score_text(facts.scores[row][benchmark]) for row in rows)
                     + " |")
    return ["R@1 % image->text / text->image for retrieval, top-1 % for zero-shot (metrics/eval.json, the "
            "benchmarks' test split).", "", *lines]


def model_card(library: str, path: str, facts: RunFacts) -> str:
    """README.md of the ``library`` export at ``path``."""
    name = f"{facts.method}-{library}"
    train = json.dumps(facts.train, sort_keys=True)
    method = json.dumps(facts.method_params, sort_keys=True)
    return "\n".join([
        "---", yaml.safe_dump(header(library, name, facts), sort_keys=False).rstrip(), "---", "",
        f"# {name}", "",
        f"A CLIP fine-tuned with {METHOD_NAMES.get(facts.method, facts.method)} for long texts (up to 248 tokens), "
        f"exported for {library} by the FIX-CLIP pipeline's export stage; this card is written by that stage from "
        "the run's params and metrics.", "",
        "## Use", "", "```python", LOADING[library].format(path=path), "```", "",
        "## Training", "",
        f"- Base model: `{facts.base_model}`.",
        f"- Data: {facts.data}; long captions written by `{facts.captioner}`.",
        f"- Method: `{facts.method}` with `{method}`.",
        f"- Training params: `{train}`.",
        f"- Image tower in this export: {facts.image_tower or 'as trained'}.", "",
        "## Scores", "", *_scores_table(facts), "",
        "## Limits", "",
        "- Texts past 248 tokens are cut there.",
        "- The scores are those of the benchmarks named above, on their test split; a model trained on the toy "
        "world (synthetic shapes) knows nothing of real photos.",
        "- FIX-CLIP's regional prompts are not in this export (neither library's image tower can hold them); "
        "`fixclip.load` of the model folder keeps them, and the table above gives both forms' scores."
        if facts.exported_row != "trained" else "- The export holds the whole model as trained.",
        ""])
