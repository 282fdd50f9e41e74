#!/usr/bin/env bash
# The one command to run on a lent GPU machine, from the repository root, with nothing installed:
#     bash benchmarks/device_run.sh              # results in $OUT (or ./device-out), summary.md printed last
#     bash benchmarks/device_run.sh --rehearse   # the same on a CPU, small steps, in the GPU image's Python
#     bash benchmarks/device_run.sh --help       # the parts, their files and what each costs
set -euo pipefail
cd "$(dirname "$0")/.."
# ganforge from this checkout, not an installed copy (the GPU machine has none).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/device_run.py "$@"
