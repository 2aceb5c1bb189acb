"""The config base every schema shares, params.yaml's sections and the model library's configs alike."""
from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Frozen; `'8'` is not an int and an unknown key is an error (as everywhere in params.yaml). A field's docstring
    is its description, the one docs/params.md shows."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

    def with_(self, **changes):
        """A validated copy with some fields changed."""
        return type(self).model_validate(self.model_dump() | changes)
