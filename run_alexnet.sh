#!/usr/bin/env bash
# Reproduces the report's AlexNet runs (5 and 10 epochs, report settings), one tuned run and
# one of the time-to-accuracy configuration into $RUNS_DIR/alexnet, then
# writes the comparison page of every run under $RUNS_DIR (run_resnet.sh's too) to
# $RUNS_DIR/report and prints its table. Extra arguments go to every run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_alexnet.sh [--flag=value ...]
# PYTHON: the interpreter (default: the checkout's .venv when there is one, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/alexnet
if [ -z "${PYTHON:-}" ]; then  # the checkout's .venv when there is one, else python3
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
# Run lengths (empty: none): the report's runs, each continuing a copy of the one before (same
# seed and data order, so the 10-epoch run's first 5 epochs are the 5-epoch run's, not trained
# twice), and the tuned run's; FAST=0 skips the time-to-accuracy run.
REPORT_EPOCHS=${REPORT_EPOCHS-5 10}
TUNED_EPOCHS=${TUNED_EPOCHS-10}
FAST=${FAST:-1}
mkdir -p "$MODEL_DIR"
echo "Python: $PYTHON"
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
previous=
for epochs in $REPORT_EPOCHS; do
  rm -rf "$MODEL_DIR/report_${epochs}ep"
  if [ -n "$previous" ] && [ -d "$MODEL_DIR/$previous" ]; then
    cp -r "$MODEL_DIR/$previous" "$MODEL_DIR/report_${epochs}ep"
  fi
  run report_${epochs}ep --train_epochs="$epochs" "${REPORT_FLAGS[@]}" "$@"
  previous=report_${epochs}ep
done
# Tuned: He initialisation, Adam, halving the learning rate every 2 epochs.
for epochs in $TUNED_EPOCHS; do
  run tuned --clean --train_epochs="$epochs" --optimizer=adam --learning_rate=0.001 \
    --batch_size=100 --dropout=0.5 --init=he --lr_decay_epochs=2 --lr_decay_rate=0.5 "$@"
done
# The time-to-accuracy configuration (its file says what it is and what it measured).
if [ "$FAST" = 1 ]; then
  run fast --clean --flagfile="$HERE/mnist_cnn/configs/alexnet_fast.flags" "$@"
fi

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
