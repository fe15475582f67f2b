#!/usr/bin/env bash
# Time the paper's whole grid at demo scale into one fresh results directory, then `ablate plot` over it.
#   bash bench/paper_time.sh [RESULTS_DIR]            `ablate launch sweeps/paper.yaml`, as a user runs it
#   PER_FILE=1 bash bench/paper_time.sh [RESULTS_DIR]  each file of paper.yaml in turn (later files reuse
#                                                      the arms earlier ones trained), then paper.yaml
# (default RESULTS_DIR: a temporary directory, removed at the end). Prints minutes per launch, the total,
# and the plot time; logs are kept under RESULTS_DIR/bench/. Uses this checkout's .venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-}"
if [ -z "$results" ]; then
  results="$(mktemp -d)"
  trap 'rm -rf "$results"' EXIT
fi
mkdir -p "$results/bench"
ablate="$root/.venv/bin/ablate"
cd "$root"
if [ -n "${PER_FILE:-}" ]; then sweeps="t2i_init freeze lr batch contrastive"; else sweeps="paper"; fi
total=0
for sweep in $sweeps; do
  t0=$(date +%s)
  "$ablate" --results "$results" launch "sweeps/$sweep.yaml" > "$results/bench/$sweep.log" 2>&1 \
    || { echo "$sweep FAILED (see $results/bench/$sweep.log)"; tail -20 "$results/bench/$sweep.log"; exit 1; }
  t1=$(date +%s)
  ran=$(grep -c "] done " "$results/bench/$sweep.log" || true)
  printf "%-12s %5.1f min  (%s stage jobs ran)\n" "$sweep" "$(awk "BEGIN{print ($t1 - $t0) / 60}")" "$ran"
  total=$((total + t1 - t0))
done
printf "%-12s %5.1f min\n" "all" "$(awk "BEGIN{print $total / 60}")"
if [ -n "${PER_FILE:-}" ]; then  # paper.yaml itself must now find every arm done
  "$ablate" --results "$results" launch sweeps/paper.yaml > "$results/bench/paper.log" 2>&1
  echo "paper.yaml relaunch: $(grep -c 'submitted' "$results/bench/paper.log" || true) jobs submitted"
fi
t0=$(date +%s.%N)
"$ablate" --results "$results" plot > "$results/bench/plot.log" 2>&1
t1=$(date +%s.%N)
printf "plot (all)   %5.1f s, %s files\n" "$(awk "BEGIN{print $t1 - $t0}")" "$(ls "$results/figures" | wc -l)"
