"""The result line every bench script ends its stdout with, and the goal rule `python -m bench` applies to it.

    {"bench": "<name>", "rows": [{"name": ..., "ours": float, "anchor": float, "anchor_name": ..., "unit": ...,
                                  "goal": ">= 0.95", "ok": false (only when a correctness check failed)}, ...]}

The goal is on ratio = ours / anchor, both in one unit: rates with '>= X' (images/s vs images/s; express a time as
a rate), or e.g. MiB against a budget with '<= 1.0'. An empty goal marks a row shown for information only.
"""
import json
import operator
import re

FIELDS = ("name", "ours", "anchor", "anchor_name", "unit", "goal")
_GOAL = re.compile(r"\s*(>=|<=)\s*([0-9]*\.?[0-9]+)\s*")
_COMPARE = {">=": operator.ge, "<=": operator.le}


def parse_goal(goal: str) -> tuple[str, float]:
    """'>= 0.95' -> ('>=', 0.95); anything else is a ValueError naming the goal."""
    match = _GOAL.fullmatch(goal)
    if not match:
        raise ValueError(f"goal {goal!r}: expected '>= X' or '<= X'")
    return match[1], float(match[2])


def meets(value: float, goal: str) -> bool:
    """Whether value satisfies the goal string."""
    op, bound = parse_goal(goal)
    return _COMPARE[op](value, bound)


def check_row(row: dict) -> None:
    """Raise ValueError naming what a result row lacks (missing fields, a bad goal, non-numeric rates)."""
    if not isinstance(row, dict):
        raise ValueError(f"row {row!r}: expected an object")
    missing = [field for field in FIELDS if field not in row]
    if missing:
        raise ValueError(f"row {row.get('name', '?')!r}: missing {', '.join(missing)}")
    if not all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool) for k in ("ours", "anchor")):
        raise ValueError(f"row {row['name']!r}: ours and anchor must be numbers")
    if row["goal"]:
        parse_goal(row["goal"])


def emit(bench: str, rows: list[dict]) -> None:
    """Print the one machine-readable result line (the last line of the script's stdout)."""
    for row in rows:
        check_row(row)
    print(json.dumps({"bench": bench, "rows": rows}), flush=True)
