#!/usr/bin/env bash
# GPU check: our DiT and VAE against ComfyUI native and diffusers, bf16, random weights at real
# sizes, one GPU, no downloads; a tiny CPU mode without CUDA (or with --tiny). Arguments go to
# bench/gpu_check.py (see its --help). Exit status 1 when an implementation disagrees.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# $PYTHON if set, else the project environment, else python on the PATH
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
export HF_HUB_OFFLINE=1
gpu="no GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
          | head -n 1) || gpu="nvidia-smi failed"
fi
echo "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC'); GPU: ${gpu:-none}; CPU cores: $(nproc 2>/dev/null || echo '?')"
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, \
CUDA {torch.version.cuda}, CUDA available: {torch.cuda.is_available()}")'
exec "$PY" bench/gpu_check.py "$@"
