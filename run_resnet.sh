#!/usr/bin/env bash
# Reproduces the report's ResNet runs (ResNet-18 for 1, 3 and 6 epochs) with this project's
# defaults, then prints a table beside the report's figures. Extra arguments go to every run.
#   DATA_DIR=../shared/data/mnist MODEL_DIR=/tmp/resnet_runs ./run_resnet.sh [--flag=value ...]
set -euo pipefail
DATA_DIR=${DATA_DIR:-/tmp/mnist_data}
MODEL_DIR=${MODEL_DIR:-/tmp/mnist_resnet_runs}
PYTHON=${PYTHON:-python}
EPOCHS=${EPOCHS:-1 3 6}
mkdir -p "$MODEL_DIR"

run_dirs=()
for epochs in $EPOCHS; do
  name=resnet18_${epochs}ep
  "$PYTHON" -m mnist_cnn.resnet_main --resnet_size=18 --data_dir="$DATA_DIR" \
    --model_dir="$MODEL_DIR/$name" --clean --train_epochs="$epochs" "$@" \
    2>&1 | tee "$MODEL_DIR/$name.log"
  run_dirs+=("$MODEL_DIR/$name")
done

"$PYTHON" -m mnist_cnn.run_table "${run_dirs[@]}" | tee "$MODEL_DIR/results.md"
