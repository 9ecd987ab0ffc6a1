#!/usr/bin/env bash
# Installs embedtune's build dependencies (Debian packages), builds it, and runs the quick
# start on the bundled example. Usage: bash scripts/setup.sh [--no-example]
# Environment: BUILD_DIR (default build), EMBEDTUNE_CUDA (AUTO|ON|OFF),
#              CUDA_ARCHS (default "80;90").
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build ccache pkg-config nlohmann-json3-dev libcli11-dev
          libutf8proc-dev libpcre2-dev libopenblas-dev libgtest-dev libtomlplusplus-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

BUILD_DIR=${BUILD_DIR:-build}
export CCACHE_DIR=${CCACHE_DIR:-$PWD/.cache/ccache}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DEMBEDTUNE_CUDA="${EMBEDTUNE_CUDA:-AUTO}" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;90}" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"

if [ "${1:-}" != "--no-example" ]; then
  bash examples/quickstart.sh "$BUILD_DIR/embedtune"
fi
