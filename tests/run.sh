#!/usr/bin/env bash
# The test command (README command 2; .ci/run runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
source .venv/bin/activate
exec python -m pytest tests "$@"
