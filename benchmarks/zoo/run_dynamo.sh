#!/bin/bash
cd "$(dirname "$0")"
for m in "$@"; do start=$(date +%s)
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 unshare -n modelbuild -f $m/${DEPLOY:-deploy-dynamo}.yaml build -j 1 -k --timeout 420 > logs/$m.${DEPLOY:-deploy-dynamo}.log 2>&1
  echo "$m dynamo-onnx route rc=$? wall=$(( $(date +%s) - start ))s" >> logs/summary.txt; done
