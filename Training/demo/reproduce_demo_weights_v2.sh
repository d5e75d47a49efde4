#!/usr/bin/env bash
# Reproduce the v2 demonstration weights (issue 10) and their model card on a CPU.
# Run from the repository root (../shared/data must exist):
#
#   RUNS=runs bash Training/demo/reproduce_demo_weights_v2.sh            # everything, in order
#   RUNS=runs STAGE=teacher bash Training/demo/reproduce_demo_weights_v2.sh   # one stage (see below)
#
# Stages (STAGE=all runs them in this order; `teacher` and `nokd` are independent and may run
# side by side, e.g. with THREADS=1 for the second):
#   teacher   teacher_v2 (without the DICOM patient), then the KD students: full data, then LOPO.
#             The first KD student caches the teacher's logits on every training slice
#             (<teacher>/logit_cache/<key>/), the second reuses them.
#   nokd      no-KD student (full data), no-KD student (LOPO), today's v1 recipe on the LOPO split.
#   evaluate  export every finished run and score it through the Lib's ONNX pipeline.
#   ship      write the chosen student (SHIP=student_distill_v2 or student_nokd_v2) and its card into
#             Resources/Models, the README figures, and its int8 copy (kdseg-train quantise).
# Every training command resumes from its last checkpoint when rerun (finished runs are skipped).
set -euo pipefail
RUNS=${RUNS:-runs}
STAGE=${STAGE:-all}
THREADS=${THREADS:-2}
SHIP=${SHIP:-student_distill_v2}
C=Training/configs

# train|distill CONFIG_NAME: run it into $RUNS/CONFIG_NAME, resuming a started run, skipping a finished one.
run() {
  local kind=$1 name=$2
  shift 2
  if [ -f "$RUNS/$name/final/model.safetensors" ]; then
    echo "== $name: finished, skipped"
    return
  fi
  local resume=()
  if [ -f "$RUNS/$name/checkpoints/latest.json" ]; then resume=(--resume); fi
  echo "== $name: kdseg-train $kind ($(date -u +%H:%M:%S))"
  kdseg-train "$kind" "$C/$name.yaml" --set output="$RUNS/$name" train.threads="$THREADS" "$@" "${resume[@]}"
}

stage_teacher() {
  run train teacher_v2
  run distill student_distill_v2 distill.teacher="$RUNS/teacher_v2"
  run distill student_distill_v2_lopo distill.teacher="$RUNS/teacher_v2"
}

stage_nokd() {
  run train student_nokd_v2
  run train student_nokd_v2_lopo
  run train student_nokd_demo_lopo
}

ALL_RUNS="teacher_v2 student_distill_v2 student_nokd_v2 student_distill_v2_lopo student_nokd_v2_lopo student_nokd_demo_lopo"

stage_evaluate() {
  for run in $ALL_RUNS; do
    if [ ! -f "$RUNS/$run/final/model.safetensors" ]; then
      echo "== $run: not finished, not evaluated"
      continue
    fi
    kdseg-train export   "$C/$run.yaml" --run "$RUNS/$run" --release "$RUNS/eval_release/$run"
    kdseg-train evaluate "$C/$run.yaml" --model "$RUNS/eval_release/$run/registry.json" -o "$RUNS/eval/$run"
  done
  # The teacher also on the full-data students' validation cases (its own are the LOPO patient's).
  if [ -f "$RUNS/eval_release/teacher_v2/registry.json" ]; then
    kdseg-train evaluate "$C/student_nokd_v2.yaml" --model "$RUNS/eval_release/teacher_v2/registry.json" \
        -o "$RUNS/eval/teacher_v2_fullval"
  fi
}

stage_ship() {
  # Latency of the shipped student on this CPU (the bundled sample CT, end to end) and the compute of every run.
  kdseg --registry "$RUNS/eval_release/$SHIP/registry.json" segment --sample \
        -o "$RUNS/sample_seg.nii.gz" --device cpu --volumes-json "$RUNS/sample_volumes.json"
  python Training/demo/compute_record.py "$RUNS" $ALL_RUNS > "$RUNS/latency.json"
  local compare=()
  for run in $ALL_RUNS teacher_v2_fullval; do
    if [ "$run" != "$SHIP" ] && [ -f "$RUNS/eval/$run/evaluation.json" ]; then
      compare+=("$run=$RUNS/eval/$run/evaluation.json")
    fi
  done
  kdseg-train export "$C/$SHIP.yaml" --run "$RUNS/$SHIP" --release Resources/Models \
      --evaluation "$RUNS/eval/$SHIP/evaluation.json" --compare "${compare[@]}" \
      --metrics-json "$RUNS/latency.json" \
      --data-licence "TotalSegmentator example CT and DICOM example (training): CC BY 4.0, Wasserthal et al. 2023" \
      --data-licence "dcmqi 3-slice CT (validation only): BSD-3-Clause"
  python Training/demo/make_figures.py "$RUNS" Resources/Screenshots "$SHIP"
  # The bundled int8 copy must be re-made from the new fp32 file (its card records the source SHA-256).
  kdseg-train quantise "$C/$SHIP.yaml" --model Resources/Models/registry.json --release Resources/Models
}

case "$STAGE" in
  teacher) stage_teacher ;;
  nokd) stage_nokd ;;
  evaluate) stage_evaluate ;;
  ship) stage_ship ;;
  all) stage_teacher; stage_nokd; stage_evaluate; stage_ship ;;
  *) echo "STAGE must be teacher, nokd, evaluate, ship or all, got $STAGE" >&2; exit 2 ;;
esac
