#!/usr/bin/env bash
# Time the paper's whole grid at demo scale: each sweep file of sweeps/paper.yaml launched in turn into one
# fresh results directory (later files reuse the arms earlier ones trained, exactly as paper.yaml would),
# then `ablate plot` over everything. Uses this checkout's .venv.
#   bash bench/paper_time.sh [RESULTS_DIR]      (default: a temporary directory, removed at the end)
# Prints minutes per sweep file, the total, and the plot time; logs are kept under RESULTS_DIR/bench/.
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
total=0
for sweep in t2i_init freeze lr batch contrastive; do
  t0=$(date +%s)
  "$ablate" --results "$results" launch "sweeps/$sweep.yaml" > "$results/bench/$sweep.log" 2>&1 \
    || { echo "$sweep FAILED (see $results/bench/$sweep.log)"; tail -20 "$results/bench/$sweep.log"; exit 1; }
  t1=$(date +%s)
  ran=$(grep -c "] done " "$results/bench/$sweep.log" || true)
  printf "%-12s %5.1f min  (%s stage jobs ran)\n" "$sweep" "$(awk "BEGIN{print ($t1 - $t0) / 60}")" "$ran"
  total=$((total + t1 - t0))
done
printf "%-12s %5.1f min\n" "all" "$(awk "BEGIN{print $total / 60}")"
# paper.yaml itself must now find every arm done.
"$ablate" --results "$results" launch sweeps/paper.yaml > "$results/bench/paper.log" 2>&1
echo "paper.yaml relaunch: $(grep -c 'submitted' "$results/bench/paper.log" || true) jobs submitted"
t0=$(date +%s.%N)
"$ablate" --results "$results" plot > "$results/bench/plot.log" 2>&1
t1=$(date +%s.%N)
printf "plot (all)   %5.1f s, %s files\n" "$(awk "BEGIN{print $t1 - $t0}")" "$(ls "$results/figures" | wc -l)"
