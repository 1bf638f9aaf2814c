#!/usr/bin/env bash
# Reproduces the report's ResNet runs: ResNet-18 with the report's settings (the Model
# Garden-era step schedule and batch-norm moving averages: --lr_schedule=step
# --batch_norm_batches=0 --batch_norm_decay=0.997) for 1, 3 and 6 epochs, beside this project's
# defaults (6 epochs, evaluated after each) and one run of the time-to-accuracy configuration,
# into $RUNS_DIR/resnet; then writes the comparison page of every run under $RUNS_DIR (the other
# scripts' too) to $RUNS_DIR/report and prints its table. Extra arguments go to every run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_resnet.sh [--flag=value ...]
# REPORT_EPOCHS, DEFAULT_EPOCHS: the runs' lengths (empty: none); FAST=0 skips the fast run;
# PYTHON: the interpreter (default: the checkout's .venv when there is one, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/resnet
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
REPORT_EPOCHS=${REPORT_EPOCHS-1 3 6}
DEFAULT_EPOCHS=${DEFAULT_EPOCHS-6}
FAST=${FAST:-1}
REPORT_FLAGS=(--lr_schedule=step --batch_norm_batches=0 --batch_norm_decay=0.997)
# The time-to-accuracy configuration; its file says what it is and what it measured.
FAST_FLAGS=(--flagfile="$HERE/mnist_cnn/configs/resnet18_fast.flags")
mkdir -p "$MODEL_DIR"
echo "Python: $PYTHON"

failed=0  # a failed run is marked on the page; the script still writes it, then exits 1

run() {  # run NAME FLAGS...: one training run into $MODEL_DIR/NAME, logged to NAME.log
  local name=$1; shift
  "$PYTHON" -m mnist_cnn.resnet_main --resnet_size=18 --data_dir="$DATA_DIR" \
    --model_dir="$MODEL_DIR/$name" --clean "$@" 2>&1 | tee "$MODEL_DIR/$name.log" || failed=1
}

for epochs in $REPORT_EPOCHS; do
  run report_${epochs}ep --train_epochs="$epochs" "${REPORT_FLAGS[@]}" "$@"
done
for epochs in $DEFAULT_EPOCHS; do
  run resnet18_${epochs}ep --train_epochs="$epochs" "$@"
done
if [ "$FAST" = 1 ]; then
  run resnet18_fast "${FAST_FLAGS[@]}" "$@"
fi

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
