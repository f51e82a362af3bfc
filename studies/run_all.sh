#!/usr/bin/env bash
# Runs the four SimCLR studies (docs/studies.md) into OUT; extra flags go to every study, e.g.
#   bash studies/run_all.sh /tmp/studies --budget_scale=20
# Each study skips the cells it already finished, so rerunning after an interruption resumes.
set -euo pipefail
OUT=${1:?usage: bash studies/run_all.sh OUT [--budget_scale=S ...]}
shift
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
for study in augmentation_grid loss_comparison head_comparison batch_size_epochs; do
  echo "== ${study} =="
  python -m "studies.${study}" --out="${OUT}/${study}" \
    --compilation_cache="${OUT}/.jax_cache" "$@"
done
