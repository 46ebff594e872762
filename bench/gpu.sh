#!/usr/bin/env bash
# The GPU checks of issue 17 as one script for a lent `device` machine (under 8 minutes on one H200):
#   bash bench/gpu.sh          # results under $OUT (or ./gpu-results)
# 1. every operator gives the same weights on the GPU as on the CPU (the GPU cases of tests/test_operators.py);
# 2. the mapped training step against the plain one on the GPU: CNN2 SLVT 2,048 and ResNet50 LWT 2,048 at
#    16 x 3 x 224², sparse, structured and dense operators (bench/step_overhead.py --device cuda).
# Nothing is installed: the machine cannot reach a package index, so the checkout runs from PYTHONPATH on the
# torch already there.
set -euo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
if python -c "import pytest" 2>/dev/null; then
  python -m pytest -q -p no:cacheprovider tests/test_operators.py -k "cpu_and_gpu" 2>&1 | tail -3 | tee "$out/gpu_operator_tests.txt"
fi
timeout 420 python bench/step_overhead.py --device cuda --targets cnn2 resnet50 --operators sparse structured dense \
  --steps 20 --resnet-batch 16 --resnet-size 224 --out "$out/gpu_step_overhead.md"
