#!/usr/bin/env bash
# Reproduces the report's AlexNet runs (5 and 10 epochs, report settings), one tuned run and
# one of the time-to-accuracy configuration (FAST=0 skips it) into $RUNS_DIR/alexnet, then
# writes the comparison page of every run under $RUNS_DIR (run_resnet.sh's too) to
# $RUNS_DIR/report and prints its table. Extra arguments go to every run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_alexnet.sh [--flag=value ...]
set -euo pipefail
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/alexnet
PYTHON=${PYTHON:-python}
REPORT_EPOCHS_SHORT=${REPORT_EPOCHS_SHORT:-5}
REPORT_EPOCHS_LONG=${REPORT_EPOCHS_LONG:-10}
TUNED_EPOCHS=${TUNED_EPOCHS:-10}
FAST=${FAST:-1}
mkdir -p "$MODEL_DIR"
failed=0  # a failed run is marked on the page; the script still writes it, then exits 1

run() {  # run NAME FLAGS...: one training run into $MODEL_DIR/NAME, logged to NAME.log
  local name=$1; shift
  "$PYTHON" -m mnist_cnn.alexnet_main --data_dir="$DATA_DIR" --model_dir="$MODEL_DIR/$name" \
    "$@" 2>&1 | tee "$MODEL_DIR/$name.log" || failed=1
}

# The report's settings: Adadelta, learning rate 0.02, batch 100, keep probability 0.8, and its
# stddev-1 normal initialisation (seeded here).
REPORT_FLAGS=(--optimizer=adadelta --learning_rate=0.02 --batch_size=100 --dropout=0.8
              --init=report --report_words)
run report_${REPORT_EPOCHS_SHORT}ep --clean --train_epochs="$REPORT_EPOCHS_SHORT" \
  "${REPORT_FLAGS[@]}" "$@"
# The longer run continues a copy of the shorter one's checkpoint: same seed and data order, so
# its first epochs are those of the short run, not trained twice.
rm -rf "$MODEL_DIR/report_${REPORT_EPOCHS_LONG}ep"
if [ -d "$MODEL_DIR/report_${REPORT_EPOCHS_SHORT}ep" ]; then
  cp -r "$MODEL_DIR/report_${REPORT_EPOCHS_SHORT}ep" "$MODEL_DIR/report_${REPORT_EPOCHS_LONG}ep"
fi
run report_${REPORT_EPOCHS_LONG}ep --train_epochs="$REPORT_EPOCHS_LONG" "${REPORT_FLAGS[@]}" "$@"
# Tuned: He initialisation, Adam, halving the learning rate every 2 epochs.
run tuned --clean --train_epochs="$TUNED_EPOCHS" --optimizer=adam --learning_rate=0.001 \
  --batch_size=100 --dropout=0.5 --init=he --lr_decay_epochs=2 --lr_decay_rate=0.5 "$@"
# The time-to-accuracy configuration (its file says what it is and what it measured).
if [ "$FAST" = 1 ]; then
  run fast --clean --flagfile="$(cd "$(dirname "$0")" && pwd)/mnist_cnn/configs/alexnet_fast.flags" \
    "$@"
fi

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
