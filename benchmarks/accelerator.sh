#!/usr/bin/env bash
# One accelerator check in one command, on a fresh machine with a GPU:
#   bash benchmarks/accelerator.sh OUT_DIR [--skip-install] [benchmarks.accelerator flags]
# Installs the project and, where the installed jax has no GPU backend, the
# CUDA build of jax (unless --skip-install), checks that JAX sees the device,
# runs the quick benchmark set and a 500-step slice of the main job's slowest
# regimen, and writes OUT_DIR/accelerator.json (plus bench.json/.md). The
# whole run is capped at 6 minutes. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:?usage: bash benchmarks/accelerator.sh OUT_DIR [--skip-install] [flags]}
shift
install=1
args=()
for a in "$@"; do
  if [ "$a" = "--skip-install" ]; then install=0; else args+=("$a"); fi
done
if [ "$install" = 1 ]; then
  "$PY" -m pip install -q -e '.[experiments]'
  if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
    "$PY" -m pip install -q -U "jax[cuda12]"
  fi
fi
mkdir -p "$out"
timeout "${ACCELERATOR_TIMEOUT:-360}" "$PY" -m benchmarks.accelerator --out "$out" "${args[@]}"
