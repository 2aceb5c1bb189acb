"""Apply a scale profile (a partial params file in configs/) over params.yaml, keeping its comments.

    python -m pipeline.profile configs/paper-30m.yaml            # writes params.yaml
    python -m pipeline.profile configs/paper-30m.yaml --check    # only validates the merged result
    python -m pipeline.profile --check                           # only validates params.yaml itself

The merged params are validated with the full schema, every key present, before anything is written, so a profile
with a typo never reaches params.yaml. Nested mappings merge key by key; any other value (lists included) replaces
the old one.
"""
import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from core.cli import ArgumentParser, existing_file, user_errors
from pipeline.params import PARAMS_FILE, ParamsError, parse_params, read_yaml


def merge(base, override) -> None:
    """Recursively write `override` into `base` in place."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def apply(profile: Path | None, params_file: Path, check_only: bool = False) -> None:
    """Merge `profile` over `params_file` and validate the result; write it unless `check_only`. No profile:
    validate `params_file` as it is."""
    round_trip = YAML()  # keeps comments, and each scalar as written (1.0e-06 stays a float for YAML 1.1 readers)
    round_trip.preserve_quotes = True
    params = _mapping(round_trip, params_file)
    if profile is not None:
        merge(params, _mapping(round_trip, profile))
    buffer = io.StringIO()
    round_trip.dump(params, buffer)
    # Validate what the stages will read, with the loader they use.
    parse_params(read_yaml(buffer.getvalue()), f"{params_file} + {profile}" if profile else str(params_file),
                 complete=True)
    if not check_only:
        params_file.write_text(buffer.getvalue())


def _mapping(round_trip: YAML, path: Path):
    """The YAML mapping in ``path`` (an empty file is an empty mapping); anything else is a ParamsError."""
    try:
        loaded = round_trip.load(path.read_text())
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of params sections, got {type(loaded).__name__}")
    return loaded


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.profile", description="Apply a params profile over "
                                "params.yaml.")
        parser.add_argument("profile", type=existing_file, nargs="?", help="none with --check: params.yaml alone")
        parser.add_argument("--params", type=existing_file, default=Path(PARAMS_FILE))
        parser.add_argument("--check", action="store_true", help="validate the merged params, write nothing")
        args = parser.parse_args(argv)
        if args.profile is None and not args.check:
            parser.error("a profile to apply, or --check to validate params.yaml alone")
        apply(args.profile, args.params, args.check)
    merged = f"{args.profile} over " if args.profile else ""
    print(f"{'checked' if args.check else 'applied'} {merged}{args.params}")


if __name__ == "__main__":
    main()
