#!/usr/bin/env bash
# The GPU measurements of the training and sampling paths, as one script for a machine with an NVIDIA GPU
# (written for a lent device machine; not yet run on one). Prints and writes under $OUT:
#   throughput_*.txt  bench/gpu_throughput.py: open_lm-1b, paper vocabulary, seq 1,152, bf16 (+ compile)
#   sampling.txt      bench/sampling_speed.py: KV-cache sampling under bf16 autocast on the GPU
# The machine needs torch with CUDA; ablate's config schema also imports hydra-core and omegaconf: where
# they are missing and nothing can be fetched, bring them as wheels in .whl/ (ignored by git):
#   pip download -d .whl --only-binary=:all: --python-version 3.12 --no-deps \
#       hydra-core omegaconf 'antlr4-python3-runtime==4.9.3'
#   then run with .whl carried: bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ablate-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
    $PY -m pip install -q --no-index --find-links .whl hydra-core omegaconf || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
# The largest micro-batch that fits, then the same compiled (the first steps compile: warm-up 3).
for mb in 16 8 4; do
    if $PY bench/gpu_throughput.py --micro-batch $mb --steps 10 2>&1 | tee "$OUT/throughput_mb$mb.txt"; then
        $PY bench/gpu_throughput.py --micro-batch $mb --steps 10 --compile 2>&1 \
            | tee "$OUT/throughput_mb${mb}_compiled.txt"
        break
    fi
done
$PY bench/sampling_speed.py --device cuda --precision bf16 --images 256 --codes 256 --skip-uncached 2>&1 \
    | tee "$OUT/sampling.txt"
