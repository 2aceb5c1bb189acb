"""The typed schema of params.yaml: one module per section, validated in full before any stage does work.

Every stage calls `load_params()` first, so a typo anywhere in params.yaml fails fast with the key path,
e.g. `download.thread_count: expected int, got 'many'`.
"""
import errno
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from pydantic import ValidationError, model_validator

from core.cli import StageFailure, UserError, user_errors

from pipeline.params.caption import CaptionParams
from pipeline.params.download import DownloadParams
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.export import ExportParams
from pipeline.params.section import Section
from pipeline.params.shard import ShardParams
from pipeline.params.source import SourceParams
from pipeline.params.train import TrainParams

PARAMS_FILE = "params.yaml"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
OUTPUT_ROOTS = ("data", "models", "checkpoints", "metrics", "plots", "dvclive")  # where stages write (dvc.yaml)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot as YAML 1.2 does: PyYAML follows YAML 1.1, where
    `1e-5` is a string, but `dvc exp run -S train.lr=1e-5` writes exactly that, and DVC (ruamel, YAML 1.2) reads it
    as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def read_yaml(text: str):
    """params YAML as the stages read it (PyYAML's safe loader with YAML 1.2 exponent floats)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader


class Params(Section):
    source: SourceParams = SourceParams()
    """Where the image URLs come from: the toy world, or a user's URL list."""
    download: DownloadParams = DownloadParams()
    """Img2dataset options, passed through by name (https://github.com/rom1504/img2dataset#api)."""
    caption: CaptionParams = CaptionParams()
    """Long captions from an MLLM served by vLLM (OpenAI-compatible API). Relative paths are relative to the
    repository root (DVC's working dir)."""
    shard: ShardParams = ShardParams()
    """Deterministic webdataset shards: jpg, long.txt, short.txt, json per sample (pipeline/shard/writer.py)."""
    train: TrainParams = TrainParams()
    """FIX-CLIP fine-tuning of the base CLIP on data/shards/train. Besides these keys, one section per method
    (train.fixclip, train.longclip, train.holistic)."""
    evaluate: EvaluateParams = EvaluateParams()
    """Base vs trained; protocols: fixclip/eval/benchmarks/README.md. The base model evaluated is train.base_model."""
    export: ExportParams = ExportParams()
    """The trained model for other libraries: models/export/{open_clip,transformers}."""

    @model_validator(mode="after")
    def _caption_prompts(self):
        """A method that reads all of a sample's K captions (Holistic CLIP) needs them from K different prompts."""
        section = self.train.method_section
        needed, listed = section.captions(self.train.caption_pool), len(self.caption.prompts)
        if section.reads_all_captions and needed > listed:
            raise ValueError(f"train.{section.captions_key}: {needed} captions need as many caption.prompts "
                             f"({listed} listed)")
        return self


    @model_validator(mode="after")
    def _toy_benchmark_held_out(self):
        """Both toy benchmark splits are scenes the training world never renders."""
        for key in ("seed", "dev_seed"):
            if getattr(self.evaluate.toy, key) == self.source.toyworld.seed:
                raise ValueError(f"evaluate.toy.{key}: equals source.toyworld.seed ({self.source.toyworld.seed}): "
                                 "not held out")
        return self


class ParamsError(UserError, ValueError):
    """params.yaml is unreadable or invalid; the message names every bad key, on one line."""

    @classmethod
    def invalid(cls, origin: str, problems: list[str]) -> "ParamsError":
        """``<origin>: invalid params: <key>: <what is wrong>; <key>: ...``."""
        return cls(f"{origin}: invalid params: {'; '.join(problems)}")


_EXPECTED = {
    "int_type": "expected int",
    "int_parsing": "expected int",
    "int_from_float": "expected int",
    "float_type": "expected float",
    "float_parsing": "expected float",
    "bool_type": "expected bool",
    "bool_parsing": "expected bool",
    "string_type": "expected str",
    "list_type": "expected list",
    "dict_type": "expected mapping",
    "model_type": "expected mapping",
}


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: missing key"
    if kind == "value_error":
        # Section validators phrase their errors as "<sub.key>: what is wrong" or as plain text.
        message = error["msg"].removeprefix("Value error, ")
        if re.match(r"^[\w.]+: ", message):
            return f"{key}.{message}" if key else message
        return f"{key}: {message}"
    what = _EXPECTED.get(kind, error["msg"].lower())
    return f"{key}: {what}, got {error['input']!r}"


def missing_keys(schema: type[Section], raw: dict, prefix: str = "") -> list[str]:
    """The keys of `schema` that `raw` does not spell out, by path (a missing section is one key)."""
    missing = []
    for name, field in schema.model_fields.items():
        if name not in raw:
            missing.append(f"{prefix}{name}")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Section) \
                and isinstance(raw[name], dict):
            missing += missing_keys(field.annotation, raw[name], f"{prefix}{name}.")
    return missing


def parse_params(raw: object, origin: str = PARAMS_FILE, complete: bool = False) -> Params:
    """Validate an already-loaded mapping; raises ParamsError naming each bad key. `complete`: as a params file,
    every key must be there (no hidden defaults); else an absent key takes the schema's default."""
    raw = raw if raw is not None else {}
    missing = missing_keys(Params, raw) if complete and isinstance(raw, dict) else []
    problems = [f"{key}: missing key" for key in missing]
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(e) for e in exc.errors()]
    if problems:
        raise ParamsError.invalid(origin, problems)
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (the whole file, every key spelt out: every stage checks every section before
    any work)."""
    try:
        raw = read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_params(raw, str(path), complete=True)


@contextmanager
def exit_on_params_error(*also: type[Exception]) -> Iterator[None]:
    """For stage entry points: a ParamsError (or another user error, or one of ``also``) prints the named bad keys
    and exits 2, without a traceback; a StageFailure, or a full disk (naming where), prints one line and exits 1.
    A failed stage leaves nothing DVC keeps (it commits outputs only after the command succeeds; our writers rename
    complete files into place), so the rerun after space is freed starts clean (docs/pipeline.md, "When a stage
    fails")."""
    try:
        with user_errors(*also):
            yield
    except StageFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        full = [f"{root}/" for root in OUTPUT_ROOTS if Path(root).is_dir() and shutil.disk_usage(root).free < 1 << 20]
        where = exc.filename or ", ".join(full) or "the stage's outputs"
        print(f"error: no space left on device writing {where}: free space there and rerun the stage",
              file=sys.stderr)
        raise SystemExit(1) from None
