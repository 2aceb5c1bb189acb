"""Column-wise JSON objects are the text json.dumps(row, sort_keys=True) writes."""
import json
import math

from pipeline.shard.json_objects import ABSENT, json_objects


def test_same_text_as_json_dumps_with_sorted_keys():
    rows = [
        {"url": "http://h/a b?c=\"d\"", "alt_text": "caf\u00e9 \U0001f600 \\ /\n\t", "n": 3, "none": None,
         "flag": True, "x": 0.1, "nan": math.nan, "nested": {"b": [1, None, "s"], "a": {"z": 1.5}}, "size": [64, 48]},
        {"url": "", "alt_text": "plain", "n": -7, "none": "now text", "flag": False, "x": 1e300, "nan": 2,
         "nested": [], "size": None},
    ]
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    assert json_objects(columns) == [json.dumps(row, sort_keys=True) for row in rows]


def test_absent_values_leave_their_key_out_and_encoded_columns_are_kept_as_is():
    columns = {"b": [1, 2], "a": [ABSENT, "x"], "c": ["[1, 2]", "null"]}
    assert json_objects(columns, encoded=("c",)) == ['{"b": 1, "c": [1, 2]}', '{"a": "x", "b": 2, "c": null}']
    assert json_objects({"a": []}) == []
