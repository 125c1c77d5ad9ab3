#!/usr/bin/env bash
# PTM-ST distillation (distill_ptm-st.py) from a recipe.
#   bash sh/distill.sh                                # built-in synthetic dataset: recipes/synthetic_demo.yaml
#                                                     (2 phases, 25 + 25 pairs, CPU, minutes; resumes a stopped run)
#   bash sh/distill.sh flickr|coco|cc3m 100|200|500   # the paper's recipes: recipes/<dataset>_<size>.yaml (needs the
#                                                     buffers, see README)
# Extra arguments after these override the recipe (e.g. --device cuda:1, --wandb online, --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-synthetic}
[ $# -gt 0 ] && shift

if [ "$DATASET" = synthetic ]; then
  RESUME=(); [ -f runs/synthetic/synthetic_demo/config.json ] && RESUME=(--resume)
  exec python distill_ptm-st.py --config recipes/synthetic_demo.yaml "${RESUME[@]}" "$@"
fi
SIZE=${1:-500}
[ $# -gt 0 ] && shift
case "$DATASET:$SIZE" in
  flickr:*|coco:*|cc3m:*) ;;
  *) echo "usage: bash sh/distill.sh [synthetic | flickr|coco|cc3m 100|200|500] [flags...]" >&2; exit 2 ;;
esac
case "$SIZE" in
  100|200|500) ;;
  *) echo "size must be 100, 200 or 500" >&2; exit 2 ;;
esac
exec python distill_ptm-st.py --config "recipes/${DATASET}_${SIZE}.yaml" "$@"
