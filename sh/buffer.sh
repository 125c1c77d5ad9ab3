#!/usr/bin/env bash
# Expert trajectories (buffer.py) from a recipe.
#   bash sh/buffer.sh                    # built-in synthetic dataset: recipes/synthetic_demo.yaml (4 experts x 8 epochs, CPU)
#   bash sh/buffer.sh flickr|coco|cc3m   # the paper's experts: recipes/<dataset>_500.yaml (NFNet-l0 + BERT, 20 x 10 epochs)
# Extra arguments override the recipe (e.g. --device cuda:1, --num_experts 40).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-synthetic}
shift || true

case "$DATASET" in
  synthetic) RECIPE=recipes/synthetic_demo.yaml ;;
  flickr|coco|cc3m) RECIPE=recipes/${DATASET}_500.yaml ;;  # the recipes of one dataset share their experts
  *) echo "usage: bash sh/buffer.sh [synthetic|flickr|coco|cc3m] [buffer.py flags...]" >&2; exit 2 ;;
esac
exec python buffer.py --config "$RECIPE" "$@"
