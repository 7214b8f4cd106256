#!/usr/bin/env bash
# The local brain's voice-to-voice benchmark on an NVIDIA GPU: the same scripted questions and
# the same table as the CPU run (cargo bench -p orb-speech --bench voice_to_voice), with the
# language model and Whisper built for CUDA and every model layer on the GPU. Needs the CUDA
# toolkit (nvcc) and a driver; the models are the small ones of scripts/install-models.sh unless
# ORB_MODELS_DIR names others (docs/local-brain.md has the sizing table for larger ones).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
./scripts/install-deps.sh build
./scripts/install-models.sh
ORB_LOCAL_GPU_LAYERS="${ORB_LOCAL_GPU_LAYERS:-999}" ORB_BENCH_RUNS="${ORB_BENCH_RUNS:-5}" \
  cargo bench -p orb-speech --features cuda --bench voice_to_voice
