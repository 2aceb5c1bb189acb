"""The `export:` section of params.yaml: which trained model folder is exported, and how close each export's
embeddings must be to ours (checked on probe images and texts before anything is written)."""
from pydantic import Field

from pipeline.params.section import Section


class ExportParams(Section):
    model: str = "models/fixclip"  # a model folder written by the train stage
    atol: float = Field(1e-5, gt=0)  # max |difference| of L2-normalised embeddings, ours vs the export's
