#!/usr/bin/env bash
# One command on a fresh machine: install, pretrain SimCLR on real Fashion-MNIST (CPU default,
# 7-13 min on 2 cores), run linear evaluation and print linear-eval top-1 beside the raw-pixel
# baseline of the same run.
# Usage: bash launch/quickstart.sh [workdir, default /tmp/simclr_fashion_mnist] [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-/tmp/simclr_fashion_mnist}"
shift || true
bash launch/install.sh requirements.txt
source launch/cpu_env.sh  # tcmalloc preloaded, TF quiet
python3 -m simclr_jax.main --config=configs/fashion_mnist.py --workdir="$workdir" "$@"
