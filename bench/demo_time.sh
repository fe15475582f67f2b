#!/usr/bin/env bash
# Time the README's first command from a fresh clone: venv + install + the demo sweep + plot.
#   bash bench/demo_time.sh            (prints the wall time of each phase)
#   KEEP=1 bash bench/demo_time.sh     (keeps the clone, its results and logs, and prints where)
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
if [ -n "${KEEP:-}" ]; then echo "kept in $work"; else trap 'rm -rf "$work"' EXIT; fi
git clone -q "$src" "$work/ablate"
cd "$work/ablate"
t0=$(date +%s)
make setup-demo > "$work/setup.log" 2>&1
t1=$(date +%s)
.venv/bin/ablate launch sweeps/demo.yaml > "$work/launch.log" 2>&1
t2=$(date +%s)
.venv/bin/ablate report --sweep demo > "$work/plot.log" 2>&1
t3=$(date +%s)
grep -E "^\[.*\] (done|failed)" "$work/launch.log" || true
echo "setup  $((t1 - t0)) s"
echo "launch $((t2 - t1)) s"
echo "plot   $((t3 - t2)) s"
echo "total  $((t3 - t0)) s  ($(( (t3 - t0) / 60 )) min $(( (t3 - t0) % 60 )) s)"
