#!/usr/bin/env bash
# One GPU, under 10 minutes: the CUDA tests, `perf` of the paper students (images/s, FLOP/s, % of the data
# sheet's bf16 peak), one epoch of the cifar100 `paper` profile timed, and a torchrun NCCL smoke.
#   bash scripts/gpu_check.sh            run it (needs a CUDA GPU; CIFAR-100 at $XKD_DATA/cifar100 for steps 3-4)
#   bash scripts/gpu_check.sh --dry-run  list what it would run, run nothing (works anywhere)
# Output: each step's command and its output, then a summary table of the steps' exit codes and times.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${XKD_DATA:-data}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
DRY=0
# the paper profile's teacher (clip-vit-b16, 'openai' weights) is downloaded on first use; a GPU machine without
# network cannot fetch it, so the timed steps use the same ViT-B/16 text tower with random weights (no download):
# the teacher's embeddings are computed once per run and cached, so its weights do not change the timings
TEACHER="--teacher clip-vit-b16-random"
[ "${1:-}" = "--dry-run" ] && DRY=1
STEPS=(
  "cuda tests|$PY -m pytest -m cuda -p no:xdist -o addopts= -q -rs tests/test_cuda.py"
  "perf, paper students|$PY -m benchmark perf --task cifar100 --profile paper --methods baseline,kd,ours_feature,ours_classifier,crd --steps 20 $TEACHER --data-dir $DATA/cifar100"
  "one paper epoch, timed|$PY -m benchmark run --task cifar100 --profile paper --methods ours_feature --set epochs=1 $TEACHER --data-dir $DATA/cifar100 --tracking-uri sqlite:///$OUT/mlflow.db --out $OUT/epoch"
  "torchrun NCCL smoke|$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m benchmark run --task synthetic --profile smoke --methods baseline,crd --tracking-uri sqlite:///$OUT/mlflow.db --out $OUT/nccl"
)
if [ $DRY = 1 ]; then
  echo "gpu_check (dry run): would run, in order:"
  for s in "${STEPS[@]}"; do echo "  - ${s%%|*}: ${s#*|}"; done
  $PY -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
  exit 0
fi
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch')" || exit 2
mkdir -p "$OUT"
echo "teacher of the timed steps: clip-vit-b16-random (the paper's ViT-B/16 text tower with random weights; no download)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
summary=()
for s in "${STEPS[@]}"; do
  name=${s%%|*}; cmd=${s#*|}
  if [[ "$cmd" == *"$DATA/cifar100"* ]] && [ ! -e "$DATA/cifar100" ]; then
    summary+=("| $name | skipped: no CIFAR-100 at $DATA/cifar100 | - |"); continue
  fi
  echo "=== $name: $cmd"
  t0=$(date +%s)
  bash -c "$cmd"
  rc=$?
  summary+=("| $name | exit $rc | $(( $(date +%s) - t0 )) s |")
done
echo; echo "| step | result | wall |"; echo "|---|---|---|"
printf '%s\n' "${summary[@]}"
