"""The `export:` section of params.yaml: which trained model folder is exported, and how close each export's
embeddings must be to ours (checked on probe images and texts before anything is written)."""
from pydantic import Field

from pipeline.params.section import Section


class ExportParams(Section):
    model: str = "models/fixclip"
    """The train stage's model folder."""
    atol: float = Field(1e-5, gt=0)
    """Max |difference| of normalised embeddings, ours vs the export's (else nothing is written), on probe images and
    texts."""
