#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (GPU tests skip without a GPU).
# Fixtures are read from EMBEDTUNE_FIXTURES (default ../shared/fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-example
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "CUDA tests (CudaOps.*, Models/CudaModel.*, CudaTraining.*, CudaTrainer.*): skipped: no GPU"
fi
