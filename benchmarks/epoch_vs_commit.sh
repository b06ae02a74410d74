#!/usr/bin/env bash
# One training epoch of a model through the runner, at one thread, at an older commit and in this
# tree at the same time, so that both see the same load: the older run goes once, this tree's run
# repeats until it ends. Prints every "epoch 0 training" line (same seed and data: the train losses
# match when both compute the same model).
#
#   bash benchmarks/epoch_vs_commit.sh COMMIT [MODEL] [DATASET]     (default: DIN amazon-sports)
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=$1 MODEL=${2:-DIN} DATASET=${3:-amazon-sports}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
work=$(mktemp -d)
git worktree add -q --detach "$work/old" "$COMMIT"
trap 'git worktree remove --force "$work/old"; rm -rf "$work"' EXIT
RUN=(--model="$MODEL" --dataset="$DATASET" --epochs=1 --show_progress=False --data_path="$PWD/dataset")
(cd "$work/old" && PYTHONPATH="$work/old" OMP_NUM_THREADS=1 "$PYTHON" run_recbole_cela.py "${RUN[@]}" \
  --checkpoint_dir="$work/old-saved" --results_dir="$work/old-results" > "$work/old.log" 2>&1) &
old=$!
i=0
while kill -0 "$old" 2>/dev/null; do
  i=$((i + 1))
  OMP_NUM_THREADS=1 "$PYTHON" run_recbole_cela.py "${RUN[@]}" --threads=1 --checkpoint_dir="$work/new-saved" \
    --results_dir="$work/new-results" > "$work/new$i.log" 2>&1
done
wait "$old"
echo "$COMMIT: $(grep -h 'epoch 0 training' "$work/old.log")"
for f in "$work"/new*.log; do echo "this tree: $(grep -h 'epoch 0 training' "$f" || echo 'no epoch line')"; done
