#!/usr/bin/env bash
# Installs everything Gen3 Workspace needs on a fresh machine, idempotently: `setup.sh run` for
# `gen3-workspace up`, `setup.sh test` for the whole test suite as well.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never
what="${1:-run}"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

ensure_uv() {
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version | awk '{print $2}')" = "$UV_VERSION" ]; then return; fi
  log "installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

ensure_python_env() {
  ensure_uv
  log "python environment from uv.lock"
  uv sync --frozen --all-extras --quiet
}

ensure_proxy() {
  # npm ci wipes node_modules; skip it when the lock has not changed since the last install.
  local stamp=node_modules/.package-lock.sha256
  local want; want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ -x node_modules/.bin/configurable-http-proxy ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  # Stock configurable-http-proxy: only the benchmarks' stock-JupyterHub side runs it.
  log "configurable-http-proxy from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
}

ensure_nginx() {
  # The public proxy engine (hub/engine.py): nginx with auth_request, in `up` and in the tests.
  if [ -x /usr/sbin/nginx ]; then return; fi
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian package: nginx (run as root, or apt-get install nginx)"; exit 1
  fi
  log "installing Debian package: nginx"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
  # Its package starts a system service on port 80 we do not want; the hub runs its own.
  (service nginx stop || true) >/dev/null 2>&1
  (update-rc.d nginx disable || true) >/dev/null 2>&1
}

ensure_debian_packages() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ -x /usr/sbin/squid ] || missing+=(squid)
  # The real-Fence test bed (tests/support/realfence.py) and the hub's external-database test
  # run private PostgreSQL clusters from Debian's server.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"; exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # squid's package starts a system service we do not want; the tests run their own.
  if [[ " ${missing[*]} " == *" squid "* ]]; then
    (service squid stop || true) >/dev/null 2>&1
  fi
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    (service postgresql stop || true) >/dev/null 2>&1
  fi
}

ensure_gen3_client() {
  # Embedded workspaces find gen3-client next to the hub's Python (Gen3LocalSpawner puts that
  # folder first on their PATH): the commit the notebook image pins, built with Go and cached.
  if ! command -v go >/dev/null 2>&1; then
    log "Go is not installed: embedded workspaces will have no gen3-client (install Go, then run this again)"
    return
  fi
  local built; built="$(tests/support/gen3client/build.sh)"
  cmp -s "$built" .venv/bin/gen3-client || install -m 0755 "$built" .venv/bin/gen3-client
}

ensure_data_bed() {
  # The data-plane test bed (tests/support/realdata.py): indexd, manifestservice and sheepdog
  # venvs from the pinned sources, next to the Fence bed (cached in .cache/databed).
  tests/support/databed/build.sh >/dev/null
}

ensure_python_env
ensure_proxy
ensure_nginx
ensure_gen3_client
if [ "$what" = test ]; then
  ensure_debian_packages
  [ -x scripts/get-helm.sh ] && scripts/get-helm.sh >/dev/null
  [ -x tests/support/kube/build.sh ] && tests/support/kube/build.sh
  tests/support/fencebed/build.sh >/dev/null
  ensure_data_bed
fi
log "ready"
