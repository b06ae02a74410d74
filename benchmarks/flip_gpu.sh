#!/usr/bin/env bash
# FLIP's deciding rows at full size on one GPU: the same rows, seeds and split as the CPU report,
# with the CPU budget lines lifted (docs/FLIP.md, "On a GPU").
#
#   bash benchmarks/flip_gpu.sh [DATASET ...]        (default: ml-100k amazon-sports)
#
# Full size = the official settings: pretraining and text fine-tuning read every training
# interaction (-1), the whole encoder trains (-1), prompts up to 100 tokens, the backbone trains
# jointly with the text tower (no freeze), and the text strategies validate every epoch. Runs go
# to docs/benchmarks/gpu/ (a report per dataset, run folders under gpu/runs/); --resume makes a
# second call continue where a first one stopped. Stage artifacts are shared as on the CPU
# (saved/flip/<dataset>/), keyed by these settings, so they never mix with the CPU ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATASETS=${*:-ml-100k amazon-sports}
FULL="--gpu_id=0 --use_gpu=True --flip_pretrain_samples=-1 --flip_finetune_samples=-1 \
--flip_trainable_layers=-1 --flip_finetune_trainable_layers=-1 --flip_max_prompt_length=100 \
--flip_freeze_backbone=False --flip_text_eval_step=1 --flip_text_batch_size=512"

"$PYTHON" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("flip_gpu.sh: no CUDA device is visible to torch; run it on a GPU machine "
                     "(a CUDA build of torch, e.g. pip install torch==2.13.0 from the CUDA index).")
print(f"GPU: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

for dataset in $DATASETS; do
  # The throughput table first: the dataset's report shows it in its FLIP section.
  "$PYTHON" -m benchmarks.flip_cost --dataset="$dataset" --out=docs/benchmarks/gpu $FULL
  "$PYTHON" -m benchmarks --dataset="$dataset" --models=Pop,FLIP-idOnly,FLIP,FLIP-textOnly --seeds=3 \
    --out=docs/benchmarks/gpu --resume --extra="$FULL"
done
