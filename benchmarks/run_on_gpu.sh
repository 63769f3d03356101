#!/usr/bin/env bash
# The GPU part of issue 5 in one call on a CUDA machine: bf16 training with MFU at dropout 0 (how published
# MFU figures are stated), the speed benchmark's GPU sections (parity, bf16 training with MFU at the config's
# dropout, greedy decode), then the GPU tests. Results, logs and nvidia-smi's view of the
# card go to $OUT (default benchmarks/results). Wheels under .whl/ (e.g. the transformers version this
# package needs, where the machine has another) are installed to /tmp/site first; src/ is put on the path.
#   OUT=/tmp/r LABEL=h200 BENCH_ARGS="--gpu-profile --gpu-decode-bf16" bash benchmarks/run_on_gpu.sh
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu-smi.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu-smi.txt"
timeout "${TRAIN_TIMEOUT:-150}" python3 benchmarks/bench_speed.py --gpu-only --gpu-sections train --gpu-train-dropout 0 \
  --label "${LABEL:-gpu}-dropout0" --out "$OUT" 2>&1 | tee "$OUT/gpu-bench-dropout0.log"
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_speed.py --gpu-only --label "${LABEL:-gpu}" --out "$OUT" ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT/gpu-bench.log"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu-pytest.log"
