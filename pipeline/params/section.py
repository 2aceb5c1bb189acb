"""Base class for every params section: unknown keys are errors and values keep their YAML type (strict).

The policy is the one of the `train:` section, which the torch-free core defines (`core.config.StrictConfig`),
so every section of params.yaml validates alike.
"""
from core.config import StrictConfig


class Section(StrictConfig):
    """A params.yaml section or sub-section. Strict: `'8'` is not an int, an unknown key is an error."""
