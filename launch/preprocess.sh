#!/usr/bin/env bash
# Tokenize a corpus into shards on NPROC MPI ranks:
#
#   NPROC=8 bash launch/preprocess.sh --input corpus/ --tokenizer tok/ --out shards/
#
# All arguments go to `python -m data_pipeline preprocess` unchanged. The shards are the
# same bytes for any NPROC (see README), so NPROC is only about speed: one rank per core.
#
# Environment:
#   NPROC       number of ranks (default 4)
#   MPIRUN      the MPI launcher (default: mpirun from PATH, e.g. .venv/bin/mpirun from
#               the `mpich` wheel). It must belong to the MPI library mpi4py loads.
#   PYTHON      interpreter (default: python)
#   MPIRUN_ARGS extra launcher flags (hostfile, binding, ...), word-split on spaces
set -euo pipefail

NPROC="${NPROC:-4}"
MPIRUN="${MPIRUN:-mpirun}"
PYTHON="${PYTHON:-python}"
read -r -a extra <<< "${MPIRUN_ARGS:-}"

if ! command -v "$MPIRUN" >/dev/null 2>&1; then
    echo "error: MPI launcher '$MPIRUN' not found (set MPIRUN, or: pip install mpich)" >&2
    exit 2
fi

flags=()
# Open MPI refuses to run as root without --allow-run-as-root, and refuses more ranks than
# detected slots without --oversubscribe (containers often report fewer). MPICH's hydra
# launcher needs neither: it runs as root and oversubscribes by default.
if "$MPIRUN" --version 2>&1 | grep -qi "open mpi\|open-mpi\|openrte"; then
    if [ "$(id -u)" = "0" ]; then
        flags+=(--allow-run-as-root)
    fi
    flags+=(--oversubscribe)
fi

exec "$MPIRUN" "${flags[@]}" "${extra[@]}" -n "$NPROC" "$PYTHON" -m data_pipeline preprocess "$@"
