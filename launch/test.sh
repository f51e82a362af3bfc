#!/usr/bin/env bash
# Installs everything (apt + pip) and runs the test suite on CPU (8 simulated devices).
# Usage: bash launch/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh requirements-dev.txt
source launch/cpu_env.sh  # tcmalloc preloaded (where installed), TF quiet
python3 -m pytest -q -p no:cacheprovider tests "$@"
