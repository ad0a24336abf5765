#!/usr/bin/env bash
# Set everything up and run trackgate on loopback: Redis, ingest, API.
# Ctrl-C stops it all. Extra arguments go to `trackgate dev`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" --run
exec "$root/.venv/bin/trackgate" dev "$@"
