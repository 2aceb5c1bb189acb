"""Base class for every params section: unknown keys are errors and values keep their YAML type (strict)."""
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A params.yaml section or sub-section. Strict: `'8'` is not an int, an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
