#!/usr/bin/env bash
# Set everything up and run the whole test suite with the project's checks.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/protocol -x).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export PATH="$root/.tools/bin:$root/.venv/bin:$PATH"

echo "== layer contracts (import-linter)"
lint-imports
echo "== ruff"
ruff check services tests
echo "== mypy --strict"
mypy
echo "== pytest"
exec pytest -q -p no:cacheprovider "$@"
