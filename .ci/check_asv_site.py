"""Fail unless an `asv publish` site holds results: a commit and graph data points."""

import json
import sys
from pathlib import Path


def has_value(value):
    if isinstance(value, list):
        return any(has_value(v) for v in value)
    return value is not None


site = Path(sys.argv[1])
index = json.loads((site / "index.json").read_text())
assert index.get("revision_to_hash"), "asv site lists no commit: no results were stored"
assert index.get("benchmarks"), "asv site lists no benchmarks"
points = 0
for graph in (site / "graphs").rglob("*.json"):
    data = json.loads(graph.read_text())
    if isinstance(data, list):  # [[revision, value or list of values], ...]
        points += sum(1 for entry in data if isinstance(entry, list) and has_value(entry[1:]))
assert points > 0, "asv site has graphs without data points"
print(f"asv site: {len(index['benchmarks'])} benchmarks, {points} data points in graphs")
