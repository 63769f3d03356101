#!/usr/bin/env bash
# The GPU part of issue 5 in one call on a CUDA machine: bf16 training with MFU at dropout 0 (how published
# MFU figures are stated), the speed benchmark's GPU sections (parity, bf16 training with MFU at the config's
# dropout, greedy decode), then the GPU tests. Results, logs and nvidia-smi's view of the
# card go to $OUT (default benchmarks/results). Wheels under .whl/ (e.g. the transformers version this
# package needs, where the machine has another) are installed to /tmp/site first; src/ is put on the path.
#   OUT=/tmp/r LABEL=h200 BENCH_ARGS="--gpu-profile --gpu-decode-bf16" bash benchmarks/run_on_gpu.sh
# The GPU tests need the real data, and ../shared does not travel to the device machine: carry a copy in .gpu-data
# (ignored by git), made here once with
#   mkdir -p .gpu-data/corpora; cp -r ../shared/data/gpt2_vocab .gpu-data/; cp ../shared/data/corpora/*.txt .gpu-data/corpora/
# and the packages the H200 image lacks or has in another version (2026-11: transformers 5.17, no datasets) as
# wheels in .whl (ignored by git; 14.5 MB), fetched here with
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 google-crc32c==1.9.0
# then: device run with carry [".whl", ".gpu-data"] and command `OUT=$OUT bash benchmarks/run_on_gpu.sh`.
# The tests run with CI=true, so missing data fails them instead of skipping them. FINETUNE_BENCH=1 also times
# `finetune` itself (plain, --compile, --activation-checkpointing) at 16 x 1024 (bench_finetune_options.py).
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [ -d .gpu-data ]; then
  export GPT2SCRATCH_DATA=$PWD/.gpu-data
fi
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
CI=true timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu-pytest.log"
if [ "${FINETUNE_BENCH:-0}" = 1 ]; then
  timeout "${FINETUNE_TIMEOUT:-300}" python3 benchmarks/bench_finetune_options.py --data "${GPT2SCRATCH_DATA:-../shared/data}" \
    --max-length 1024 --batch-size 16 --steps 12 --out "$OUT" 2>&1 | tee "$OUT/gpu-finetune-options.log"
fi
