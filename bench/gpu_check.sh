#!/usr/bin/env bash
# The GPU checks in one run of at most ~8 minutes, from the repository root, on a machine with CUDA
# and no network (nothing here downloads; open_clip and wandb are not needed).
#
#   bash bench/gpu_check.sh --prepare        # HERE, before: data/synthetic + cache/ for the demo part (CPU, ~1 min)
#   OUT=/some/dir bash bench/gpu_check.sh    # THERE, with data/synthetic and cache carried along
#   DEVICE=cpu QUICK=1 OUT=/tmp/x bash bench/gpu_check.sh   # a dry run of this script on the CPU, tiny sizes
#
# Parts, each under its own timeout; one failing or running out of time does not stop the others:
#   (a) tests/test_cuda.py: pass-2 replay bit for bit on CUDA with dropout (ConvNet, NFNet-l0, NFNet-l0 bf16),
#       --resume on CUDA ends where an uninterrupted run does, peak GPU memory and determinism flags in
#       metrics.jsonl, the --amp check against float32 in a real run
#   (b) python -m bench.paper_scale --device cuda: every --matching mode in MATCHING at 2, 8, 20 steps,
#       strict float32, --tf32, --tf32 --nondeterministic and bf16 + channels_last, each lever's gradient error
#       against strict float32, expert and evaluation epochs (OOM is reported as OOM)
#   (c) python -m bench.heads_scale: symmetric heads against full-encoder matching, s/iteration at the paper's
#       sizes (nfnet_l0 at 224 px, 200 pairs, batches of 40, 8 steps) and bytes per timestamp (issue 22)
#   (d) python -m bench.speed --preset paper: the paper-size iteration's FLOPs against the card's own dense rates
#   (e) bash sh/demo.sh --device cuda, with what time is left (it resumes if run again on the same disk)
# Writes to $OUT (flat): machine.log, tests.log, paper_scale.log, paper_scale.jsonl, paper_scale.md, heads.log,
# heads_scale.jsonl, speed.log, demo.log, summary.txt. PARTS="tests bench heads speed demo" (the default) picks the
# parts; LIMIT (s) the total.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --prepare ]; then
  set -e
  python - <<'EOF'
import argparse
from distill_utils import cli_args
from distill_utils.config import DataConfig, from_flags
from distill_utils.datasets.loading import load_split, load_train, prepare
p = argparse.ArgumentParser()
cli_args.add_data_args(p)
cli_args.add_runtime_args(p)
data = from_flags(DataConfig, cli_args.finalize(p.parse_args(["--device", "cpu"])))  # the demo's data settings
prepare(data)
load_train(data)
for split in ("val", "test"):
    load_split(data, split)
EOF
  du -sh data/synthetic cache
  echo "carry: data/synthetic cache"
  exit 0
fi

OUT=${OUT:?set OUT to the output directory}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-tests bench heads speed demo}
LIMIT=${LIMIT:-480}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CUBLAS_WORKSPACE_CONFIG=:4096:8
began=$SECONDS
left() { local l=$((LIMIT - (SECONDS - began))); [ "$l" -gt 5 ] && echo "$l" || echo 5; }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
status=()
part() {  # part NAME SECONDS COMMAND...: run under a timeout, log to $OUT/NAME.log, remember the outcome
  local name=$1 secs; secs=$(cap "$2"); shift 2
  echo "== $name (timeout ${secs}s, ${SECONDS}s elapsed)"
  timeout -k 10 "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  case $rc in 0) status+=("$name: ok");; 124|137) status+=("$name: TIMEOUT after ${secs}s");; *) status+=("$name: FAILED rc=$rc");; esac
}

{ date -u; nvidia-smi 2>&1 || echo "no nvidia-smi"; git log -1 --oneline 2>/dev/null
  python -c "import torch, timm, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| timm', timm.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.log"

if [[ " $PARTS " == *" tests "* ]]; then
  if [ "$DEVICE" = cpu ]; then  # dry run: the same tests, skipped without CUDA, plus the CPU amp tests
    part tests 100 python -m pytest -q -rs tests/test_cuda.py tests/test_amp.py
  else
    part tests 100 python -m pytest -q -rs tests/test_cuda.py
  fi
fi
if [[ " $PARTS " == *" bench "* ]]; then
  QUICKFLAG=(); [ "${QUICK:-0}" = 1 ] && QUICKFLAG=(--quick)
  part paper_scale 260 python -m bench.paper_scale --device "$DEVICE" --budget_s 210 --repeats 1 --out "$OUT" "${QUICKFLAG[@]}"
fi
if [[ " $PARTS " == *" heads "* ]]; then
  SIZE=(--mini_batch_size 40 --num_queries 200 --steps 8); [ "${QUICK:-0}" = 1 ] && SIZE=(--quick)
  part heads 90 python -m bench.heads_scale --device "$DEVICE" --repeats 2 --out "$OUT" "${SIZE[@]}"
fi
if [[ " $PARTS " == *" speed "* ]]; then
  SIZE=(); [ "${QUICK:-0}" = 1 ] && SIZE=(--image_size 32 --num_queries 8 --mini_batch_size 4 --syn_steps 1 --expert_images 8 --batch_train 4)
  part speed 60 python -m bench.speed --preset paper --device "$DEVICE" --rounds 1 --repeats 1 --epochs "${SIZE[@]}"
fi
if [[ " $PARTS " == *" demo "* ]]; then
  if [ ! -d data/synthetic ] || [ ! -d cache ]; then
    echo "demo: data/synthetic or cache/ missing (run 'bash bench/gpu_check.sh --prepare' and carry both)" | tee "$OUT/demo.log"
    status+=("demo: SKIPPED (no carried data)")
  else
    part demo "$(left)" bash sh/demo.sh --device "$DEVICE"
  fi
fi

{ echo "gpu_check: ${SECONDS}s in all"; printf '%s\n' "${status[@]}"
  [ -f "$OUT/tests.log" ] && tail -n 3 "$OUT/tests.log"
  [ -f "$OUT/paper_scale.md" ] && cat "$OUT/paper_scale.md"
  [ -f "$OUT/heads.log" ] && tail -n 8 "$OUT/heads.log"
  [ -f "$OUT/speed.log" ] && grep -E "rates|^\||epoch" "$OUT/speed.log"
  [ -f "$OUT/demo.log" ] && grep -E "s/iteration|mean|random|distilled|error" "$OUT/demo.log" | tail -n 20
} 2>&1 | tee "$OUT/summary.txt"
