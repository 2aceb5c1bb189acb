"""docs/params.md, the reference of every params.yaml key, written from the schema: each field's docstring is its one
description (params.yaml's comments are checked against it). `python -m pipeline.params.reference` rewrites the page;
`--check` exits 1 when the page differs."""
import argparse
import re
import sys
import textwrap
import types
from dataclasses import astuple
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from core.config import StrictConfig
from fixclip.methods import METHODS
from fixclip.train.config import TrainConfig
from pipeline.params import Params

PAGE = Path("docs/params.md")
COMMAND = "python -m pipeline.params.reference"
LONG_DEFAULT = 60  # characters: a longer default is shown in params.yaml only
NAV = ("[README](../README.md) · [pipeline](pipeline.md) · **params** · [methods](methods.md) · "
       "[evaluation](evaluation.md) ·\n[decontamination](decontamination.md) · [export](export.md) · [scale](scale.md) · "
       "[development](development.md) ·\n[architecture](architecture.md)")
_BOUNDS = ((annotated_types.Ge, ">="), (annotated_types.Gt, ">"), (annotated_types.Le, "<="), (annotated_types.Lt, "<"),
           (annotated_types.MultipleOf, "a multiple of"), (annotated_types.MinLen, "items >="))


def text(doc: str | None) -> str:
    """A docstring on one line, capitalised unless it opens with a list of values (`toyworld | url_list: ...`)."""
    line = " ".join((doc or "").split())
    return line if re.match(r"[\w.]+ \|", line) else line[:1].upper() + line[1:]


def sections(schema: type[BaseModel]) -> dict[str, type[StrictConfig]]:
    """The sections a schema holds besides its fields: train's one per method (``train.<name>``)."""
    return {name: entry.section for name, entry in METHODS.items()} if issubclass(schema, TrainConfig) else {}


def entry_classes(annotation) -> tuple[type[StrictConfig], ...]:
    """The section classes a field holds, directly, in a list, or as a union of entries (by ``kind``)."""
    if isinstance(annotation, type) and issubclass(annotation, StrictConfig):
        return (annotation,)
    if get_origin(annotation) in (list, Union, types.UnionType) or hasattr(annotation, "__metadata__"):
        return tuple(c for arg in get_args(annotation) for c in entry_classes(arg))
    return ()


def description(field, annotation) -> str:
    """A field's docstring, else (a section) its class's."""
    own = text(field.description)
    if own or not entry_classes(annotation):
        return own
    return text(entry_classes(annotation)[0].__doc__)


def type_name(annotation) -> str:
    """`int`, `int | null`, a Literal's values (`a | b`), `list[str]`, ..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if entry_classes(annotation):
        return "list of entries" if origin is list else "section"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field) -> str:
    """The field's numeric and length constraints, e.g. `, >= 1`."""
    return "".join(f", {word} {astuple(m)[0]}" for m in field.metadata for kind, word in _BOUNDS if isinstance(m, kind))


def default(field) -> str:
    """The schema's default (params.yaml lists the same values: tests/pipeline/params/test_schema.py)."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value] if isinstance(value, list) else value
    if isinstance(value, BaseModel):
        return ""
    shown = yaml.safe_dump(value, default_flow_style=True, width=1 << 16, sort_keys=False).strip().removesuffix("...")
    shown = shown.strip()
    if len(shown) > LONG_DEFAULT:
        return f", default: {len(value)} items (params.yaml)" if isinstance(value, list) else ", default in params.yaml"
    return f", default `{shown}`"


def rows(schema: type[BaseModel], path: str, depth: int) -> list[str]:
    """The page's lines for one section: its keys, then its sub-sections."""
    lines, subsections = [], []
    for name, field in schema.model_fields.items():
        annotation, key = field.annotation, f"{path}.{name}" if path else name
        classes = entry_classes(annotation)
        if classes and get_origin(annotation) is None:
            subsections.append((key, annotation, description(field, annotation)))
            continue
        lines.append(f"- `{key}` ({type_name(annotation)}{bounds(field)}{default(field)}): "
                     f"{description(field, annotation)}")
        for cls in classes:
            kinds = get_args(cls.model_fields["kind"].annotation) if "kind" in cls.model_fields else ()
            heading = f"{key}[]" + (f" (kind: {' | '.join(kinds)})" if kinds else "")
            subsections.append((heading, cls, text(cls.__doc__)))
    subsections += [(f"{path}.{name}", cls, text(cls.__doc__)) for name, cls in sections(schema).items()]
    for key, cls, about in subsections:
        lines += ["", f"{'#' * min(depth + 2, 4)} `{key}`", ""] + ([about, ""] if about else [])
        lines += rows(cls, key.split(" ")[0], depth + 1)
    return lines


def undescribed(schema: type[BaseModel] = Params, path: str = "") -> list[str]:
    """Keys whose field has no description (nor, for a section, a class docstring)."""
    missing = []
    for name, field in schema.model_fields.items():
        key = f"{path}.{name}" if path else name
        if not description(field, field.annotation):
            missing.append(key)
        for cls in entry_classes(field.annotation):
            missing += undescribed(cls, key)
    for name, cls in sections(schema).items():
        missing += ([f"{path}.{name}"] if not text(cls.__doc__) else []) + undescribed(cls, f"{path}.{name}")
    return missing


def page() -> str:
    """docs/params.md as the schema writes it."""
    head = ["# Params reference", "", NAV, "",
            f"Every key of `params.yaml`, by its dotted path: type, allowed values, default (the embedded default; "
            f"`params.yaml` lists every key with these values) and meaning. Written from the schema "
            f"(`pipeline/params/`, the `train:` section from `fixclip/train/config.py` and `fixclip/config.py`, the "
            f"benchmark entries from `fixclip/eval/benchmarks/`) by `{COMMAND}`: edit a field's docstring there, "
            f"not this page. How params are validated, merged from profiles and tracked: "
            f"[pipeline, \"Params\"](pipeline.md#params)."]
    head[-1] = textwrap.fill(head[-1], 120, break_on_hyphens=False, break_long_words=False)
    return "\n".join(head + rows(Params, "", 0)).rstrip() + "\n"


def yaml_comments(yaml_text: str) -> dict[str, str]:
    """The comment beside each key of a params file, by dotted path, its comment-only continuation lines (at the
    same column) joined; comments on list items and commented-out lines are not a key's."""
    comments, stack, last = {}, [], None
    for line in yaml_text.splitlines():
        key = re.match(r"^( *)([A-Za-z_]\w*):( *[^#]*?)?(?: +# ?(.*))?$", line)
        continued = re.match(r"^( +)# ?(.*)$", line)
        if key:
            indent = len(key[1])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key[2])]
            last = None
            if key[4] is not None:
                last = ".".join(k for _, k in stack), line.index("#")
                comments[last[0]] = key[4].strip()
        elif continued and last and len(continued[1]) == last[1]:
            comments[last[0]] += " " + continued[2].strip()
        else:
            last = None
    return comments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is not what the schema writes")
    args = parser.parse_args(argv)
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != page():
            print(f"error: {PAGE} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
