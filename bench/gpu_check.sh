#!/usr/bin/env bash
# GPU check for a lent machine, from this repository's root: about 4-5 minutes on an H200.
#
#     PYTHON=/path/to/python OUT=/some/dir bash bench/gpu_check.sh
#     DEVICE=cpu bash bench/gpu_check.sh     # dry run of the same steps on a CPU, tiny settings
#
# The machine has no network, so nothing is installed: $PYTHON (default python) must already have torch, timm,
# accelerate, wandb and scikit-learn. Steps: the GPU's name; versions; bench/throughput.py (train.py against a
# plain loop, resnet50 at 224 px in bf16 on synthetic data, 2 runs each); bench/toggles.py (train.py's
# channels_last, cudnn_benchmark and compile switches, one run each); bench/compute.py (model FLOPs against the
# measured bf16 matmul rate, with the toggle baseline's images/s). Each step has a time limit; one that fails is
# marked and the rest still run. Everything printed also goes to $OUT/<step>.txt (default OUT=bench/gpu_out), and
# the tables to $OUT/RESULTS.md, sections ready to copy into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # the toggle runs' folders: compute.py reads the baseline's history.csv
trap 'rm -rf "$WORK"' EXIT

if [ "$DEVICE" = cuda ]; then
  # 2,048 training images a run, 16 batches an epoch; 3 epochs, the first one warm-up
  MODEL=(--model resnet50 --img_size 224 --batch_size 128)
  RUN=(--epochs 3 --train_samples 2048 --mixed_precision bf16)
  TOGGLES=channels_last,cudnn_benchmark,compile
  DTYPE=bf16
else
  MODEL=(--model resnet10t --img_size 16 --batch_size 64)
  RUN=(--epochs 2 --train_samples 256 --mixed_precision no)
  TOGGLES=channels_last
  DTYPE=fp32
fi
failed=0

step() {  # NAME SECONDS COMMAND...: output to the terminal and $OUT/NAME.txt; a failure is marked, later steps run
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit $limit s): $*" | tee "$OUT/$name.txt"
  if ! timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"; then
    echo "== $name FAILED or timed out" | tee -a "$OUT/$name.txt"
    failed=1
  fi
}

if [ "$DEVICE" = cuda ]; then
  step gpu 30 nvidia-smi -L
fi
step versions 60 "$PY" -c "import sys, torch, timm, accelerate, wandb, sklearn
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(),
      'timm', timm.__version__, 'accelerate', accelerate.__version__, 'wandb', wandb.__version__)"
step throughput 150 "$PY" bench/throughput.py --device "$DEVICE" "${MODEL[@]}" "${RUN[@]}" --datasets synthetic \
  --repeats 2 --write "$OUT/RESULTS.md"
step toggles 180 "$PY" bench/toggles.py --device "$DEVICE" "${MODEL[@]}" "${RUN[@]}" --dataset synthetic \
  --toggles "$TOGGLES" --timeout 100 --keep "$WORK" --write "$OUT/RESULTS.md"
HISTORY=()  # the toggle baseline's run, if it finished; else compute.py makes its own
if [ -f "$WORK/0/out/history.csv" ]; then
  cp "$WORK/0/out/history.csv" "$OUT/baseline_history.csv"
  HISTORY=(--history "$OUT/baseline_history.csv")
fi
step compute 90 "$PY" bench/compute.py --device "$DEVICE" --dtype "$DTYPE" "${MODEL[@]}" --dataset synthetic \
  --epochs 3 --train_samples 2048 "${HISTORY[@]}" --write "$OUT/RESULTS.md"
echo "outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$failed"
