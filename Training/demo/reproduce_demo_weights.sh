#!/usr/bin/env bash
# Reproduce the bundled demonstration weights and their model card figures on a CPU.
# Run from the repository root (../shared/data must exist). RUNS may point outside the
# checkout so long runs survive a fresh clone; every training step can be resumed with
# the same command plus --resume after an interruption.
set -euo pipefail
RUNS=${RUNS:-runs}
MODEL_ID=kdseg-student-shsa-demo

kdseg-train train   Training/configs/teacher_demo.yaml         --set output=$RUNS/teacher_demo
kdseg-train train   Training/configs/student_nokd_demo.yaml    --set output=$RUNS/student_nokd_demo
kdseg-train distill Training/configs/student_distill_demo.yaml --set output=$RUNS/student_distill_demo \
                    distill.teacher=$RUNS/teacher_demo

# Evaluate all three through the Lib's ONNX pipeline on the validation cases.
for run in teacher_demo student_nokd_demo student_distill_demo; do
  kdseg-train export "$RUNS/$run" "$RUNS/eval_release/$run" --model-id "${run//_/-}" --title "$run"
  kdseg-train evaluate "$RUNS/eval_release/$run/registry.json" Training/configs/demo_data.yaml -o "$RUNS/eval/$run"
done

# Latency of the exported student on this CPU (the bundled sample CT, end to end).
kdseg --registry "$RUNS/eval_release/student_distill_demo/registry.json" segment --sample \
      -o "$RUNS/sample_seg.nii.gz" --device cpu --volumes-json "$RUNS/sample_volumes.json"
python - "$RUNS" <<'PY'
import json, sys
runs = sys.argv[1]
timings = json.load(open(f"{runs}/sample_volumes.json"))["timings_s"]
json.dump({"latency_cpu": {"case": "bundled sample CT, 122x101x112",
                           "seconds_by_stage": timings, "total_seconds": sum(timings.values())}},
          open(f"{runs}/latency.json", "w"), indent=2)
PY

# Ship the distilled student with its model card.
kdseg-train export "$RUNS/student_distill_demo" Resources/Models --model-id $MODEL_ID \
    --title "KD student (SHSA) - demonstration weights" --version 0.1.0 \
    --evaluation "$RUNS/eval/student_distill_demo/evaluation.json" \
    --compare teacher="$RUNS/eval/teacher_demo/evaluation.json" student_without_kd="$RUNS/eval/student_nokd_demo/evaluation.json" \
    --metrics-json "$RUNS/latency.json"

# README figures (bundled model on the sample CT; teacher / KD / no-KD chart).
python Training/demo/make_figures.py "$RUNS" Resources/Screenshots
