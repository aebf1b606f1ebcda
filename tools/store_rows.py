"""A spec's rows of a tomex store's manifest, from one model version only.

A store is shared by every run of a spec, and a retrained model keeps the spec's name:
the manifest then lists the images of both models (their job keys differ by the model's
digest). Summaries of a spec (tools/demo_judge.py, tools/demo_shape.py) must not mix
them, so they keep the rows of the model that finished the spec's newest image, read
from each job's record (objects/<key>/record.json, `job.model.files`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def latest_model_rows(manifest: Path, spec: str | None) -> list[dict]:
    """The manifest's rows of `spec` (all specs when None) whose job ran on the model of
    the newest finished row; says on stderr how many rows of other models it left out."""
    with open(manifest, newline="") as f:
        rows = [row for row in csv.DictReader(f) if spec is None or row["spec"] == spec]
    if not rows:
        return []
    digests = {}
    for row in rows:
        if row["key"] not in digests:
            record = manifest.parent / "objects" / row["key"] / "record.json"
            digests[row["key"]] = json.loads(record.read_text())["job"]["model"]["files"]
    newest = max(rows, key=lambda row: row["finished_at"])
    model = digests[newest["key"]]
    kept = [row for row in rows if digests[row["key"]] == model]
    if len(kept) < len(rows):
        others = len({digests[row["key"]] for row in rows}) - 1
        print(
            f"{manifest}: kept the {len(kept)} rows of model {model[:19]}... (newest image); "
            f"left out {len(rows) - len(kept)} rows of {others} other model version(s)",
            file=sys.stderr,
        )
    return kept
