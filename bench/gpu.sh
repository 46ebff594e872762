#!/usr/bin/env bash
# The GPU checks of issue 17, as one script for the `device` machine (under 8 minutes on one H200):
#   bash bench/gpu.sh            # writes bench/results/gpu_*.md under $OUT (or ./gpu-results)
# 1. every operator gives the same weights on the GPU as on the CPU (tests/test_operators.py, GPU cases);
# 2. the mapped step against the plain step on the GPU, CNN2 and ResNet50 at 16 x 3 x 224² (sparse, structured, dense).
set -euo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
python -m pip install -q -e ".[test]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -m pytest -q tests/test_operators.py -k "cpu_and_gpu" 2>&1 | tail -3 | tee "$out/gpu_operator_tests.txt"
timeout 420 python bench/step_overhead.py --device cuda --targets cnn2 resnet50 --operators sparse structured dense \
  --steps 20 --resnet-batch 16 --resnet-size 224 --out "$out/gpu_step_overhead.md"
