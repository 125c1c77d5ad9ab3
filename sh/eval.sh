#!/usr/bin/env bash
# Evaluate distilled subsets (SPEC section 6) with fresh students, mean ± std over runs, under a recipe's protocol.
#
#   bash sh/eval.sh                                  # synthetic demo: the files sh/distill.sh writes,
#                                                    # plus a random baseline of the same total size
#   bash sh/eval.sh flickr D_1.pt D_2.pt [flags]     # the paper's settings (NFNet-l0 + BERT); also coco, cc3m
#
# Flags after the files go to evaluate.py, e.g. --baseline random --out results.json --select_on val.
set -euo pipefail
cd "$(dirname "$0")/.."

dataset=${1:-synthetic}
[ $# -gt 0 ] && shift

case "$dataset" in
  synthetic)
    run=runs/synthetic/synthetic_demo
    ckpts=("$run/distilled_0_final.pt" "$run/distilled_1_final.pt")
    for f in "${ckpts[@]}"; do
      [ -f "$f" ] || { echo "$f not found: run 'bash sh/distill.sh' first" >&2; exit 1; }
    done
    python evaluate.py --config recipes/synthetic_demo.yaml --ckpt_path "${ckpts[@]}" --baseline random \
      --out "$run/eval.json" "$@"
    ;;
  flickr|coco|cc3m)
    [ $# -gt 0 ] || { echo "usage: bash sh/eval.sh $dataset DISTILLED.pt [DISTILLED.pt ...] [evaluate.py flags]" >&2; exit 2; }
    python evaluate.py --config "recipes/${dataset}_500.yaml" --ckpt_path "$@"
    ;;
  *)
    echo "usage: bash sh/eval.sh [synthetic | flickr|coco|cc3m DISTILLED.pt ...]" >&2
    exit 2
    ;;
esac
