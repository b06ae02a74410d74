#!/usr/bin/env bash
# The GPU path in one short run (< 8 min on one GPU), on what benchmarks/gpu_prepare.sh put in .gpu/:
#
# 1. CELA on amazon-sports with every stage on: domain-adaptive pretraining, alignment, the text
#    table, fusion; text stages under bf16 autocast (text_amp: auto), item texts up to 256 tokens
#    (the official length; amazon-sports' keyword texts are far shorter, so it truncates nothing);
# 2. FLIP's joint strategy on its default samples (pretraining and text fine-tuning);
# 3. benchmarks.throughput's rows (RecBole's layers against the plugin's) on the GPU.
#
# Epochs are capped so that the whole check fits; it proves the path, it does not tune. Results
# go to $OUT (the device tool's return folder) or docs/benchmarks/gpu/: copy them to
# docs/benchmarks/gpu/ and commit them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${OUT:-docs/benchmarks/gpu}
mkdir -p "$DEST"
if [ -d .gpu/whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/gpu-site:$PWD
fi
export PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' 2>&1 | tee "$DEST/gpu-check-env.txt"
import pandas, torch, transformers
if not torch.cuda.is_available():
    raise SystemExit("gpu_check.sh: no CUDA device is visible to torch; run it on a GPU machine.")
if int(pandas.__version__.split(".")[0]) >= 3:
    raise SystemExit(f"gpu_check.sh: pandas {pandas.__version__}: RecBole 1.2.1 needs pandas < 3 "
                     "(carry a pandas 2 wheel in .gpu/whl).")
print(f"GPU {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, pandas {pandas.__version__}")
PY
RUN=(--gpu_id=0 --use_gpu=True --show_progress=False --state=INFO --data_path=/tmp/gpu-dataset
     --checkpoint_dir=/tmp/gpu-saved --results_dir="$DEST" --source_path=.gpu/data/amazon-sports
     --text_encoder=.gpu/encoder --epochs=3)
timeout 270 "$PYTHON" -m recbole_cela --model=CELA --dataset=amazon-sports "${RUN[@]}" --dap=True --dap_epochs=1 \
  --align_epochs=2 --max_text_length=256 > "$DEST/gpu-cela.log" 2>&1 || echo "CELA: exit $?" | tee -a "$DEST/gpu-cela.log"
timeout 150 "$PYTHON" -m recbole_cela --model=FLIP --dataset=amazon-sports "${RUN[@]}" --flip_finetune=joint \
  --flip_text_epochs=1 > "$DEST/gpu-flip.log" 2>&1 || echo "FLIP: exit $?" | tee -a "$DEST/gpu-flip.log"
timeout 90 "$PYTHON" -m benchmarks.throughput --dataset=amazon-sports --models=DIN,DINUser,CELA,DeepFM,DCNV2 \
  --threads=1 --rounds=3 --out="$DEST" --gpu_id=0 --use_gpu=True --data_path=/tmp/gpu-dataset \
  --source_path=.gpu/data/amazon-sports --text_encoder=.gpu/encoder > "$DEST/gpu-throughput.log" 2>&1 \
  || echo "throughput: exit $?" | tee -a "$DEST/gpu-throughput.log"
tail -n 3 "$DEST"/gpu-*.log
