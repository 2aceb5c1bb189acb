"""The base of an ``evaluate.benchmarks`` entry of params.yaml: each adapter module defines its entry class (the
entry's ``kind`` and options, the adapter's keyword arguments) next to its ``load``, which the class names as its
``adapter``; the package's ``ENTRIES`` lists the classes."""
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from core.config import StrictConfig

NAME = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class Entry(StrictConfig):
    """A benchmark entry; fields named in `path_keys` must exist when the entry is listed."""

    name: str = NAME
    """The benchmark's name in metrics and tables."""
    max_text_tokens: int | None = Field(None, ge=3)
    """Retrieval only: cut every caption to its first N CLIP tokens (start and end included) before any model sees
    it; 77 shows what a model gets from a long text without what lies beyond CLIP's context."""
    path_keys: ClassVar[tuple[str, ...]] = ()
    adapter: ClassVar[Callable]  # the module's load(**options) -> RetrievalBenchmark | ClassificationBenchmark

    @property
    def is_retrieval(self) -> bool:
        return True

    @model_validator(mode="after")
    def _paths_exist(self):
        for key in self.path_keys:
            if not Path(getattr(self, key)).exists():
                raise ValueError(f"{key}: not found: {getattr(self, key)!r}")
        if self.max_text_tokens is not None and not self.is_retrieval:
            raise ValueError("max_text_tokens: applies to retrieval benchmarks only")
        return self

    def adapter_kwargs(self) -> dict:
        """Keyword arguments of the entry's ``adapter``."""
        return self.model_dump(exclude={"kind", "name", "max_text_tokens"})

    def load(self, **overrides):
        """The benchmark: the adapter called with the entry's options, ``overrides`` replacing some."""
        return type(self).adapter(**(self.adapter_kwargs() | overrides))
