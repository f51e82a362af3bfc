#!/usr/bin/env bash
# Installs what simclr_jax needs on a fresh Debian/Ubuntu machine: the real Fashion-MNIST from the
# Debian package dataset-fashion-mnist (the offline default dataset) and the pinned Python packages.
# Usage: bash launch/install.sh [requirements file, default requirements.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  if command -v apt-get >/dev/null; then
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  else
    echo "No apt-get: Fashion-MNIST will come from TFDS (needs internet) or --config.dataset.data_dir." >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check -r "$requirements"
