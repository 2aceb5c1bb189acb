"""Apply a scale profile (a partial params file in configs/) over params.yaml, keeping its comments.

    python -m pipeline.profile configs/paper-30m.yaml            # writes params.yaml
    python -m pipeline.profile configs/paper-30m.yaml --check    # only validates the merged result

The merged params are validated with the full schema before anything is written, so a profile with a typo never
reaches params.yaml. Nested mappings merge key by key; any other value (lists included) replaces the old one.
"""
import argparse
import io
import sys
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from pipeline.params import PARAMS_FILE, ParamsError, parse_params


def merge(base, override) -> None:
    """Recursively write `override` into `base` in place."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def apply(profile: Path, params_file: Path, check_only: bool = False) -> None:
    round_trip = YAML()  # keeps comments, and each scalar as written (1.0e-06 stays a float for YAML 1.1 readers)
    round_trip.preserve_quotes = True
    params = round_trip.load(params_file.read_text())
    merge(params, round_trip.load(profile.read_text()) or {})
    buffer = io.StringIO()
    round_trip.dump(params, buffer)
    # Validate what the stages will read, with the loader they use.
    parse_params(yaml.safe_load(buffer.getvalue()), f"{params_file} + {profile}")
    if not check_only:
        params_file.write_text(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply a params profile over params.yaml.")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument("--check", action="store_true", help="validate the merged params, write nothing")
    args = parser.parse_args()
    try:
        apply(args.profile, args.params, args.check)
    except ParamsError as exc:
        sys.exit(f"error: {exc}")
    print(f"{'checked' if args.check else 'applied'} {args.profile} over {args.params}")


if __name__ == "__main__":
    main()
