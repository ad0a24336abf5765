#!/usr/bin/env bash
# Install what trackgate needs on a fresh Debian machine, idempotently:
# system packages (redis-server, iproute2, tcpdump, ...), a virtualenv in
# .venv with the package and its test dependencies, helm/kubectl/hadolint in
# .tools/bin, and PHP with Laravel for the bridge tests.
#
#   scripts/setup.sh          everything
#   scripts/setup.sh --run    only what running the system needs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { printf 'setup: %s\n' "$*"; }

run_only=0
[ "${1:-}" = "--run" ] && run_only=1

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

apt_need=()
command -v redis-server >/dev/null 2>&1 || apt_need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_need+=(redis-tools)
# The compiled record decoder: a C compiler and the Python headers.
command -v gcc >/dev/null 2>&1 || apt_need+=(gcc libc6-dev)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
    || apt_need+=(python3-dev)
if [ "$run_only" -eq 0 ]; then
    command -v ip >/dev/null 2>&1 || apt_need+=(iproute2)
    command -v tcpdump >/dev/null 2>&1 || apt_need+=(tcpdump)
    command -v iptables >/dev/null 2>&1 || apt_need+=(iptables)
    command -v tc >/dev/null 2>&1 || apt_need+=(iproute2)
    command -v npm >/dev/null 2>&1 || apt_need+=(npm)
fi
if [ "${#apt_need[@]}" -gt 0 ]; then
    say "installing ${apt_need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq "${apt_need[@]}" >/dev/null
fi
# Redis from the distribution starts a system service; trackgate starts its own.

python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 or newer is needed" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$python" -m venv .venv
fi
stamp=.venv/.trackgate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ requirements-test.lock -nt "$stamp" ] \
    || [ services/trackgate/protocol/_speedups.c -nt "$stamp" ] \
    || [ services/trackgate/core/_resp.c -nt "$stamp" ]; then
    say "installing the package and its test dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    # Pinned versions (requirements-test.lock, from pyproject.toml by uv), so
    # that a release upstream cannot change what the tests run against.
    .venv/bin/pip install -q -r requirements-test.lock
    .venv/bin/pip install -q --no-deps -e .
    touch "$stamp"
fi

if [ "$run_only" -eq 0 ]; then
    bash .ci/install-tools.sh
    bash .ci/install-php.sh || say "PHP could not be installed: the Laravel worker tests will skip"
fi
say "done"
