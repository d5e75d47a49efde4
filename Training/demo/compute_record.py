"""Latency of the shipped model on the sample CT and the compute of every demo run, as the card's extra metrics.

    python Training/demo/compute_record.py RUNS_DIR RUN [RUN ...] > RUNS_DIR/latency.json

Reads ``RUNS_DIR/sample_volumes.json`` (written by ``kdseg segment --sample --volumes-json``)
and each ``RUNS_DIR/RUN/summary.json``; runs that have not finished are listed as such.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List


def compute_record(runs: Path, names: List[str]) -> Dict[str, Any]:
    timings = json.loads((runs / "sample_volumes.json").read_text(encoding="utf-8"))["timings_s"]
    compute: Dict[str, Any] = {}
    total = 0.0
    for name in names:
        summary_path = runs / name / "summary.json"
        if not summary_path.is_file():
            compute[name] = {"finished": False}
            continue
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        compute[name] = {k: summary.get(k) for k in ("model", "kind", "steps", "device", "threads", "wall_hours",
                                                     "cpu_hours", "train_slices")}
        total += float(summary.get("cpu_hours") or 0.0)
    compute["total_cpu_hours"] = total
    return {"latency_cpu": {"case": "bundled sample CT, 122x101x112", "seconds_by_stage": timings,
                            "total_seconds": sum(timings.values())},
            "compute_of_the_demo_runs": compute}


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: compute_record.py RUNS_DIR RUN [RUN ...]")
    print(json.dumps(compute_record(Path(sys.argv[1]), sys.argv[2:]), indent=2))
