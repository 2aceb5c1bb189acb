"""JSON objects a column at a time: the same text as `json.dumps(row, sort_keys=True)` per row, without building a
dict per row or walking the encoder's generic path for every value (the shard stage writes one per sample)."""
import json
from json.encoder import encode_basestring_ascii as quoted  # the C escaper json.dumps uses (ensure_ascii)

ENCODER = json.JSONEncoder(sort_keys=True)
ABSENT = object()  # a value that leaves its key out of that row's object


def json_objects(columns: dict[str, list], encoded: tuple[str, ...] = ()) -> list[str]:
    """One object per row of `columns` (name -> values, all as long), keys sorted; ABSENT values leave keys out. The
    columns named in `encoded` hold JSON text already."""
    fields = [[quoted(name) + ": " + value for value in values] if name in encoded else _fields(name, values)
              for name, values in sorted(columns.items())]
    if any(ABSENT in values for values in columns.values()):
        return ["{" + ", ".join(filter(None, row)) + "}" for row in zip(*fields)]
    return ["{" + ", ".join(row) + "}" for row in zip(*fields)]


def _fields(name: str, values: list) -> list[str]:
    """`"name": value` per value, "" where ABSENT. Strings, None and ints are written here; the rest by the encoder."""
    key = quoted(name) + ": "
    return [key + quoted(value) if type(value) is str
            else key + "null" if value is None
            else key + str(value) if type(value) is int
            else "" if value is ABSENT
            else key + ENCODER.encode(value) for value in values]
