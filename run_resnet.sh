#!/usr/bin/env bash
# Reproduces the report's ResNet runs (ResNet-18 for 1, 3 and 6 epochs) with this project's
# defaults into $RUNS_DIR/resnet, then writes the comparison page of every run under $RUNS_DIR
# (run_alexnet.sh's too) to $RUNS_DIR/report and prints its table. Extra arguments go to every
# run.
#   DATA_DIR=../shared/data/mnist RUNS_DIR=/tmp/mnist_cnn_runs ./run_resnet.sh [--flag=value ...]
set -euo pipefail
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
RUNS_DIR=${RUNS_DIR:-/tmp/mnist_cnn_runs}
MODEL_DIR=$RUNS_DIR/resnet
PYTHON=${PYTHON:-python}
EPOCHS=${EPOCHS:-1 3 6}
mkdir -p "$MODEL_DIR"

failed=0  # a failed run is marked on the page; the script still writes it, then exits 1
for epochs in $EPOCHS; do
  name=resnet18_${epochs}ep
  "$PYTHON" -m mnist_cnn.resnet_main --resnet_size=18 --data_dir="$DATA_DIR" \
    --model_dir="$MODEL_DIR/$name" --clean --train_epochs="$epochs" "$@" \
    2>&1 | tee "$MODEL_DIR/$name.log" || failed=1
done

"$PYTHON" -m mnist_cnn.report --runs_dir="$RUNS_DIR" --out_dir="$RUNS_DIR/report"
exit $failed
