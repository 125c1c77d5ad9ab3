#!/usr/bin/env bash
# The whole PTM-ST chain on the built-in synthetic dataset, on the CPU, from recipes/synthetic_demo.yaml:
# experts -> shortcut trajectories -> two-phase distillation -> evaluation against random real pairs.
# Rerunning continues where it stopped. Extra arguments go to every step's script but convexify.py (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
N=buffer/synthetic/convnet_minilm/InfoNCE/normal

echo "== 1/4 expert trajectories"
bash sh/buffer.sh synthetic "$@"
echo "== 2/4 shortcut trajectories"
for window in "0 6" "0 8"; do
  set -- $window "$@"
  out="$(dirname "$N")/convexified_$1_$2"
  [ -d "$out" ] || python convexify.py --start "$1" --end "$2" --normal_dir "$N"
  shift 2
done
echo "== 3/4 phased distillation"
bash sh/distill.sh synthetic "$@"
echo "== 4/4 evaluation"
bash sh/eval.sh synthetic "$@"
