#!/usr/bin/env bash
# Installs what simclr_jax needs on a fresh Debian/Ubuntu machine: the real Fashion-MNIST from the
# Debian package dataset-fashion-mnist (the offline default dataset), tcmalloc (libtcmalloc-minimal4,
# for CPU training) and the pinned Python packages.
# Usage: bash launch/install.sh [requirements file, default requirements.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
# tcmalloc: launch/cpu_env.sh preloads it for CPU training (large buffers without page faults).
packages=()
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  packages+=(dataset-fashion-mnist)
fi
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
  packages+=(libtcmalloc-minimal4)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  if command -v apt-get >/dev/null; then
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
  else
    echo "No apt-get: Fashion-MNIST will come from TFDS (needs internet) or --config.dataset.data_dir;" \
      "CPU training runs on the system allocator (tcmalloc gives the CPU default +26 % steps/s)." >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check -r "$requirements"
