#!/usr/bin/env bash
# PTM-ST distillation recipes (distill_ptm-st.py).
#   bash sh/distill.sh                         # built-in synthetic dataset: 2 phases, 25 + 25 pairs, CPU, minutes
#                                              (hyper-parameters chosen on the val split, see docs/results.md)
#   bash sh/distill.sh flickr|coco|cc3m 100|200|500   # the paper's recipes (needs the buffers, see README)
# Extra arguments after these are passed on (e.g. --device cuda:1, --wandb online, --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-synthetic}
[ $# -gt 0 ] && shift

if [ "$DATASET" = synthetic ]; then
  B=buffer/synthetic/convnet_minilm/InfoNCE
  NAME=synthetic_demo
  RESUME=(); [ -f "runs/synthetic/$NAME/config.json" ] && RESUME=(--resume)
  exec python distill_ptm-st.py --dataset synthetic --image_encoder convnet --text_encoder minilm --image_trainable \
    --buffer_path "$B/convexified_0_6" "$B/convexified_0_8" --min_start_epoch 0 1 --max_start_epoch 2 3 \
    --num_queries 25 25 --Iteration 100 100 --subset_num 2 --syn_steps 8 --expert_epochs 1 --mini_batch_size 10 \
    --lr_teacher_img 0.03 --lr_teacher_txt 0.03 --lr_img 100 --lr_txt 10 --lr_sim 0.01 --lr_lr 1e-3 \
    --sim_type full --loss_type InfoNCE --ema_decay 0.97 \
    --eval_it 100 --num_eval 2 --epoch_eval_train 100 --batch_train 128 --name "$NAME" "${RESUME[@]}" "$@"
fi
SIZE=${1:-500}
[ $# -gt 0 ] && shift

case "$DATASET" in
  flickr) LR_SIM=10 ;;
  coco|cc3m) LR_SIM=50 ;;
  *) echo "usage: bash sh/distill.sh [synthetic | flickr|coco|cc3m 100|200|500] [flags...]" >&2; exit 2 ;;
esac
B=buffer/$DATASET/nfnet_bert/InfoNCE
MB=20; [ "$DATASET$SIZE" = flickr500 ] && MB=40   # as in the authors' scripts
case "$SIZE" in   # the paper's phase split of the budget
  500) PHASES=(--buffer_path "$B/convexified_0_6" "$B/convexified_0_8" --min_start_epoch 0 1 --max_start_epoch 2 3
               --num_queries 200 299 --Iteration 2000 2000 --subset_num 2) ;;
  200) PHASES=(--buffer_path "$B/convexified_0_6" "$B/convexified_0_8" --min_start_epoch 0 1 --max_start_epoch 2 3
               --num_queries 99 100 --Iteration 2000 2000 --subset_num 2) ;;
  100) PHASES=(--buffer_path "$B/convexified_0_6" --min_start_epoch 0 --max_start_epoch 2
               --num_queries 99 --Iteration 2000 --subset_num 1) ;;
  *) echo "size must be 100, 200 or 500" >&2; exit 2 ;;
esac
exec python distill_ptm-st.py --dataset "$DATASET" --image_encoder nfnet --text_encoder bert --image_trainable \
  "${PHASES[@]}" --syn_steps 8 --expert_epochs 1 --mini_batch_size "$MB" \
  --lr_img 1000 --lr_txt 1000 --lr_lr 0.01 --lr_teacher_img 0.1 --lr_teacher_txt 0.1 \
  --lr_sim "$LR_SIM" --sim_type full --loss_type WBCE --ema_decay 0.99 \
  --eval_it 500 --num_eval 5 --epoch_eval_train 100 --name "ptm-st_${DATASET}_${SIZE}" "$@"
