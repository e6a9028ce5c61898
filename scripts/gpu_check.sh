#!/usr/bin/env bash
# The GPU paths in one command of at most 8 minutes, on a machine with an NVIDIA GPU and a Python
# that has torch (CUDA) and transformers: the ranker on CUDA (float32 / float16 / bfloat16, against
# the CPU paths), the explain bench on CUDA (transformers bf16; vLLM where it imports), a GPU FAISS
# index where faiss-gpu is installed. JSON into $OUT (default benchmarks/results/gpu).
#   bash scripts/gpu_check.sh [--model DIR]
# Wheels in .whl/ (pydantic & co., where the machine lacks them) are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
timeout 480 $PY -m recserve.bench.gpu --out "$OUT" "$@"
