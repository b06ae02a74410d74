#!/usr/bin/env bash
# Here, on a CPU machine with the project installed: fills .gpu/ (git-ignored) with what
# benchmarks/gpu_check.sh needs on a GPU machine that reaches no package index and has no copy of
# ../shared: wheels of the packages its image lacks (RecBole and the few it imports that are not
# there), amazon-sports' source files, and the MiniLM encoder saved in bf16 (half the bytes; the
# text stages run under bf16 autocast there anyway). Carry .gpu with the command:
#
#   bash benchmarks/gpu_prepare.sh            # here, once
#   device run: carry [".gpu"], command "bash benchmarks/gpu_check.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl recbole==1.2.1 colorlog texttable thop
cp -r ../shared/data/amazon-sports .gpu/data/
"$PYTHON" - <<'PY'
import torch
from transformers import AutoModel, AutoTokenizer

from recbole_cela.text.encoder import default_encoder_path

src = default_encoder_path()
AutoModel.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(".gpu/encoder")
AutoTokenizer.from_pretrained(src).save_pretrained(".gpu/encoder")
PY
du -sh .gpu
