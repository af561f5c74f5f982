#!/usr/bin/env bash
# Reproduce examples/intr-digits: build the digits-on-a-canvas dataset, then train INTR on it from scratch with
# run_finetune.py (a few minutes on 2 CPU cores).
#   Usage: bash examples/train_digits.sh [DATA_DIR [OUTPUT_DIR [more run_finetune.py options]]]
# The model goes to runs/intr-digits by default, not over the shipped examples/intr-digits. A second run into the
# same folder needs --overwrite_output_dir (e.g. `bash examples/train_digits.sh data runs/intr-digits
# --overwrite_output_dir`); replacing the shipped model takes OUTPUT_DIR=examples/intr-digits and that option.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-data}
OUTPUT_DIR=${2:-runs/intr-digits}

python examples/make_digits_dataset.py --output_dir "$DATA_DIR" --seed 0

# From scratch (--config_name): a 3-stage basic-block ResNet (stride 16: 8x8 feature map on 128x128 canvases),
# d_model 64, 2+2 layers, no dropout. Nothing is pretrained, so nothing is frozen and the backbone gets the same
# (from-scratch) learning rate as the transformer. No flip: digits are not mirror-symmetric.
python run_finetune.py \
    --config_name examples/intr_digits_config.json \
    --dataset_path "$DATA_DIR" --dataset_name digits \
    --output_dir "$OUTPUT_DIR" --do_train --do_eval \
    --fixed_size 128 --flip_prob 0 \
    --learning_rate 5e-4 --backbone_learning_rate 5e-4 --weight_decay 1e-4 \
    --num_train_epochs 30 --lr_drop 20 \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
    --eval_strategy epoch --save_strategy no --logging_steps 45 --disable_tqdm true \
    --seed 42 "${@:3}"

python examples/write_digits_card.py "$OUTPUT_DIR"
