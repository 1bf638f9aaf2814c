#!/usr/bin/env bash
# Trains GoogLeNet (Inception v1, the assignment's third network) on MNIST with this project's
# defaults, and one run of the time-to-accuracy configuration (README "GoogLeNet"), into
# $RUNS_DIR/googlenet, then writes the comparison page of every run under $RUNS_DIR (the other
# two scripts' too) to $RUNS_DIR/report and prints its table. Extra arguments go to every run;
# FAST=0 skips the fast run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_googlenet.sh [--flag=value ...]
# PYTHON: the interpreter (default: the checkout's .venv when there is one, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/googlenet
if [ -z "${PYTHON:-}" ]; then  # the checkout's .venv when there is one, else python3
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
EPOCHS=${EPOCHS-6}  # empty: no default run
FAST=${FAST:-1}
# The time-to-accuracy configuration; its file says what it is and what it measured.
FAST_FLAGS=(--flagfile="$HERE/mnist_cnn/configs/googlenet_fast.flags")
mkdir -p "$MODEL_DIR"
echo "Python: $PYTHON"

failed=0  # a failed run is marked on the page; the script still writes it, then exits 1

run() {  # run NAME FLAGS...: one training run into $MODEL_DIR/NAME, logged to NAME.log
  local name=$1; shift
  "$PYTHON" -m mnist_cnn.googlenet_main --data_dir="$DATA_DIR" \
    --model_dir="$MODEL_DIR/$name" --clean "$@" 2>&1 | tee "$MODEL_DIR/$name.log" || failed=1
}

for epochs in $EPOCHS; do
  run googlenet_${epochs}ep --train_epochs="$epochs" "$@"
done
if [ "$FAST" = 1 ]; then
  run googlenet_fast "${FAST_FLAGS[@]}" "$@"
fi

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
