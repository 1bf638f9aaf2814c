#!/usr/bin/env bash
# Reproduces the report's ResNet runs (ResNet-18 for 1, 3 and 6 epochs) with this project's
# defaults, and one run of the time-to-accuracy configuration (README "Time to accuracy"), into
# $RUNS_DIR/resnet, then writes the comparison page of every run under $RUNS_DIR (run_alexnet.sh's
# too) to $RUNS_DIR/report and prints its table. Extra arguments go to every run; FAST=0 skips
# the fast run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_resnet.sh [--flag=value ...]
set -euo pipefail
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/resnet
PYTHON=${PYTHON:-python}
EPOCHS=${EPOCHS:-1 3 6}
FAST=${FAST:-1}
# The time-to-accuracy configuration; its file says what it is and what it measured.
FAST_FLAGS=(--flagfile="$(cd "$(dirname "$0")" && pwd)/mnist_cnn/configs/resnet18_fast.flags")
mkdir -p "$MODEL_DIR"

failed=0  # a failed run is marked on the page; the script still writes it, then exits 1

run() {  # run NAME FLAGS...: one training run into $MODEL_DIR/NAME, logged to NAME.log
  local name=$1; shift
  "$PYTHON" -m mnist_cnn.resnet_main --resnet_size=18 --data_dir="$DATA_DIR" \
    --model_dir="$MODEL_DIR/$name" --clean "$@" 2>&1 | tee "$MODEL_DIR/$name.log" || failed=1
}

for epochs in $EPOCHS; do
  run resnet18_${epochs}ep --train_epochs="$epochs" "$@"
done
if [ "$FAST" = 1 ]; then
  run resnet18_fast "${FAST_FLAGS[@]}" "$@"
fi

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
