#!/usr/bin/env bash
# Installs everything (apt + pip) and runs the test suite on CPU (8 simulated devices), in two
# pytest-xdist workers, one test file at a time each: much of the suite is XLA compilation, which
# runs on one thread, so two workers keep both cores busy (2-core AVX2 VM: 33 -> 23 min).
# Usage: bash launch/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh requirements-dev.txt
source launch/cpu_env.sh  # tcmalloc preloaded (where installed), TF quiet
# A test that runs 15 minutes is hung: pytest-timeout prints every thread's stack and ends that
# worker (the test fails, the suite goes on).
python3 -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --timeout=900 --timeout-method=thread \
  tests "$@"
