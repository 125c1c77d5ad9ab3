#!/usr/bin/env bash
# Expert trajectories (buffer.py).
#   bash sh/buffer.sh                    # built-in synthetic dataset: 4 experts x 8 epochs, CPU (a few minutes)
#   bash sh/buffer.sh flickr|coco|cc3m   # the paper's recipe: NFNet-l0 + BERT, 20 experts x 10 epochs
# Extra arguments are passed on to buffer.py (e.g. --device cuda:1, --num_experts 40).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-synthetic}
shift || true

case "$DATASET" in
  synthetic)
    python buffer.py --dataset synthetic --image_encoder convnet --text_encoder minilm --image_trainable \
      --num_experts 4 --train_epochs 8 --lr_teacher_img 0.1 --lr_teacher_txt 0.1 --batch_train 128 \
      --eval_freq 4 --loss_type InfoNCE --buffer_path buffer "$@" ;;
  flickr|coco|cc3m)
    python buffer.py --dataset "$DATASET" --image_encoder nfnet --text_encoder bert --image_trainable \
      --image_size 224 --num_experts 20 --train_epochs 10 --lr_teacher_img 0.1 --lr_teacher_txt 0.1 \
      --batch_train 128 --eval_freq 5 --loss_type InfoNCE --buffer_path buffer "$@" ;;
  *)
    echo "usage: bash sh/buffer.sh [synthetic|flickr|coco|cc3m] [buffer.py flags...]" >&2; exit 2 ;;
esac
