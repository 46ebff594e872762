#!/usr/bin/env bash
# The GPU checks of issues 17, 28 and 29 as one script for a lent `device` machine (one H200):
#   bash bench/gpu.sh 28       # issue 28 only: the compiled step and the loader, under 8 minutes
#   bash bench/gpu.sh 17       # issue 17 only: operators on the GPU and the step overhead, under 8 minutes
#   bash bench/gpu.sh 29       # issue 29: the frontiers this 2-core CPU cannot run, 9 minutes per call, resumable
#   bash bench/gpu.sh          # 17 and 28 (about 15 minutes: two device commands' worth)
# Results under $OUT (or ./gpu-results).
# Issue 17: 1. every operator gives the same weights on the GPU as on the CPU (the GPU cases of
#    tests/test_operators.py); 2. the mapped training step against the plain one on the GPU: CNN2 SLVT 2,048 and
#    ResNet50 LWT 2,048 at 16 x 3 x 224², sparse, structured and dense operators (bench/step_overhead.py).
# Issue 28: 3. the compiled step: mapped sparse step eager / compiled (generation, whole forward) against the plain
#    target eager / compiled, CNN2 SLVT 2,048 and ResNet50 LWT 2,048 at 16 x 3 x 112² (about 4 minutes, mostly
#    cold compiles; ResNet50's generation-only case is left out for time); 4. the input pipeline: the loader alone
#    on the embedded image folder at 224² and training steps, for workers 0, 2, 4, 8 (bench/loader.py, 3 minutes).
# Issue 29: 5. the GPT 4 x 256 frontier (1,000 steps, BPE 4,096; the resnet18 one ran on the CPU: bench/results/frontier_resnet18.md),
#    bench/frontier.py with 8 workers, each under a time limit; their run logs live in $FRONTIER_RUNS (default
#    $out/frontier-runs): carry it back and forth and call again until the reports appear (every finished run is
#    kept; a call only adds runs). Too long for the 2-core CPU (122-241 s per 100-step byte-level run in
#    bench/results/frontier_runs.jsonl, and these runs take 1,000 steps: about 74 runs of 20-40 min on one core).
# Nothing is installed: the machine cannot reach a package index, so the checkout runs from PYTHONPATH on the
# torch already there.
set -euo pipefail
which="${1:-all}"
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAPSCALE_CACHE="${MAPSCALE_CACHE:-$out/cache}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
if [[ "$which" == all || "$which" == 17 ]]; then
  if python -c "import pytest" 2>/dev/null; then
    python -m pytest -q -p no:cacheprovider tests/test_operators.py -k "cpu_and_gpu" 2>&1 | tail -3 | tee "$out/gpu_operator_tests.txt"
  fi
  timeout 420 python bench/step_overhead.py --device cuda --targets cnn2 resnet50 --operators sparse structured dense \
    --steps 20 --resnet-batch 16 --resnet-size 224 --out "$out/gpu_step_overhead.md"
fi
if [[ "$which" == all || "$which" == 28 ]]; then
  timeout 240 python bench/compile_step.py --device cuda --steps 20 --resnet-batch 16 --resnet-size 112 \
    --skip resnet50:sparse:generation --out "$out/gpu_compile_step.md" || echo "compile bench: exit $? (240 s limit)"
  timeout 180 python bench/loader.py --device cuda --workers 0 2 4 8 --rounds 1 --sources 224 --train-steps 20 \
    --out "$out/gpu_loader.md" || echo "loader bench: exit $? (180 s limit)"
fi
if [[ "$which" == 29 ]]; then
  runs="${FRONTIER_RUNS:-$out/frontier-runs}"
  timeout 270 python bench/frontier.py --targets gpt --workers 8 --variant i29 --runs "$runs/gpt" \
    --out "$out/frontier_gpt.md" || echo "GPT frontier: exit $? (270 s limit; call again to go on)"
fi
