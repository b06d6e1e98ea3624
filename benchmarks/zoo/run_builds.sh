#!/bin/bash
# One build at a time, -j 1, keep going; offline (no network namespace) and HF offline.
# env: TARGETS (default: all six), TIMEOUT (seconds per step, default 1800)
cd "$(dirname "$0")"
mkdir -p logs
T=${TARGETS:-"onnx tflite tflite-int8 coreml-fp16 executorch executorch-int8"}
for m in "$@"; do
  start=$(date +%s)
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 unshare -n modelbuild -f $m/deploy.yaml build -j 1 -k \
    --timeout ${TIMEOUT:-1800} $T >> logs/$m.build.log 2>&1
  echo "$m [$T] timeout=${TIMEOUT:-1800} rc=$? wall=$(( $(date +%s) - start ))s" >> logs/summary.txt
done
