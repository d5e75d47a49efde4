#!/usr/bin/env bash
# Reproduce the demonstration weights and their model card figures on a CPU.
# Run from the repository root (../shared/data must exist). Every training command can
# be resumed after an interruption by rerunning it with --resume.
set -euo pipefail
RUNS=${RUNS:-runs}
C=Training/configs

kdseg-train train   $C/teacher_demo.yaml         --set output=$RUNS/teacher_demo
kdseg-train train   $C/student_nokd_demo.yaml    --set output=$RUNS/student_nokd_demo
kdseg-train distill $C/student_distill_demo.yaml --set output=$RUNS/student_distill_demo \
                    distill.teacher=$RUNS/teacher_demo

# Evaluate all three through the Lib's ONNX pipeline on the validation cases (data.val).
for run in teacher_demo student_nokd_demo student_distill_demo; do
  kdseg-train export   $C/$run.yaml --run "$RUNS/$run" --release "$RUNS/eval_release/$run"
  kdseg-train evaluate $C/$run.yaml --model "$RUNS/eval_release/$run/registry.json" -o "$RUNS/eval/$run"
done

# Latency of the exported student on this CPU (the bundled sample CT, end to end), and the
# compute of the three runs, for the model card.
kdseg --registry "$RUNS/eval_release/student_distill_demo/registry.json" segment --sample \
      -o "$RUNS/sample_seg.nii.gz" --device cpu --volumes-json "$RUNS/sample_volumes.json"
python - "$RUNS" <<'PY'
import json, sys
runs = sys.argv[1]
timings = json.load(open(f"{runs}/sample_volumes.json"))["timings_s"]
compute = {}
for run in ("teacher_demo", "student_nokd_demo", "student_distill_demo"):
    summary = json.load(open(f"{runs}/{run}/summary.json"))
    compute[run] = {k: summary.get(k) for k in ("model", "steps", "device", "threads", "wall_hours", "cpu_hours")}
compute["total_cpu_hours"] = sum(c["cpu_hours"] for c in compute.values())
json.dump({"latency_cpu": {"case": "bundled sample CT, 122x101x112",
                           "seconds_by_stage": timings, "total_seconds": sum(timings.values())},
           "compute_of_the_demo_runs": compute},
          open(f"{runs}/latency.json", "w"), indent=2)
PY

# Ship the distilled student with its model card, then the README figures.
kdseg-train export $C/student_distill_demo.yaml --run "$RUNS/student_distill_demo" --release Resources/Models \
    --evaluation "$RUNS/eval/student_distill_demo/evaluation.json" \
    --compare teacher="$RUNS/eval/teacher_demo/evaluation.json" \
              student_without_kd="$RUNS/eval/student_nokd_demo/evaluation.json" \
    --metrics-json "$RUNS/latency.json"
python Training/demo/make_figures.py "$RUNS" Resources/Screenshots
