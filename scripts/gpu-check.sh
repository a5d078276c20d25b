#!/usr/bin/env bash
# The paper profile in miniature on a GPU (issue 15.6): writes stand-ins for every paper input in the
# real formats (tests/paper_inputs.py: dataset archives, the rosinality checkpoint, the Inception and
# VGG16 weight files), runs the paper-smoke DAG (configs/paper.yaml + configs/paper-smoke.yaml) with
# runtime.device: cuda, then prints per GPU rule the jobs, wall time and peak GPU memory
# (torch.cuda.max_memory_allocated) and exits non-zero if any GPU job computed on the CPU.
#
#   bash scripts/gpu-check.sh [WORK_DIR]      # default: a new temporary folder; needs `make setup` first
#
# GPU_CHECK_DEVICE=cpu runs the same DAG on the CPU (about 10 minutes on 2 cores), and the check then
# fails naming every GPU job: what it checks, seen without a GPU.
# Offline: nothing is downloaded.  A run killed part way resumes when started again with the same WORK_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d -t qgan-gpu-check.XXXXXX)}"
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
export PATH="$ROOT/.venv/bin:$PATH" MPLBACKEND=Agg
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" != cpu ]; then
  python -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu-check: torch sees no CUDA device')"
  python -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
fi
[ -f "$WORK/inputs/inputs.yaml" ] || python "$ROOT/tests/paper_inputs.py" "$WORK/inputs" >/dev/null
printf 'runtime:\n  device: %s\n' "$DEVICE" > "$WORK/device.yaml"
CONFIGS=("$ROOT/configs/paper.yaml" "$ROOT/configs/paper-smoke.yaml" "$WORK/inputs/inputs.yaml" "$WORK/device.yaml")
mkdir -p "$WORK/run"
start=$(date +%s)
(cd "$WORK/run" && bash "$ROOT/scripts/run-workflow.sh" -s "$ROOT/Snakefile" --cores all report --configfile "${CONFIGS[@]}")
echo "gpu-check: the paper-smoke DAG took $(( $(date +%s) - start )) s; run in $WORK/run"
cd "$ROOT" && python -m workflow_src.reporting.gpucheck "$WORK/run" --configfile "${CONFIGS[@]}"
