#!/usr/bin/env bash
# Builds the data-plane test bed's services into .cache/databed/ (git-ignored): unpacks the pinned
# indexd, manifestservice and sheepdog sources (and the three tiny clients indexd's lock takes from
# git) and makes one venv per service, pinned to that service's own poetry.lock. Does nothing when
# the cache is current. Fence and arborist come from tests/support/fencebed/build.sh.
#
# Usage: tests/support/databed/build.sh [--force]
#   GEN3_THIRDPARTY   folder of the pinned archives (default ../shared/thirdparty next to the repo)
#   FENCE_PYTHON      a Python >= 3.13 (default: the newest ~/.pyenv/versions/3.1[3-9].*)
#
# Needs uv and a Python >= 3.13 already on the machine. Prints the cache directory on stdout;
# progress goes to stderr.
set -euo pipefail

INDEXD_COMMIT=1992b2f04a2b6f239c9390d0f158148c8faf7ec3            # uc-cdis/indexd 2026.09
MANIFESTSERVICE_COMMIT=3f19818ab44679eab88e270687716c819b587840   # uc-cdis/manifestservice 2026.07
SHEEPDOG_COMMIT=727de14d025113d2225bffeb12740060ca4fda0b          # uc-cdis/sheepdog 2026.05
DOICLIENT_COMMIT=1a5f4b2a0b04577f31f3dcec511ade117d9f4ba1         # uc-cdis/doiclient 1.0.0
DOSCLIENT_COMMIT=38c0f1ab42edf3efb1ad6348d7dbdff81b131360         # uc-cdis/dosclient 1.1.0
HSCLIENT_COMMIT=f122072ee245216da5e4260f718d6f886db81773          # uc-cdis/hsclient 1.0.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cache="$root/.cache/databed"
thirdparty="${GEN3_THIRDPARTY:-$root/../shared/thirdparty}"
pins_script="$root/tests/support/fencebed/lock_to_pins.py"
force=0; [[ "${1:-}" == "--force" ]] && force=1

say() { echo "databed: $*" >&2; }

# name repo commit -> archive path (checked readable)
archive() { echo "$thirdparty/$1-${3:0:8}.tar.gz"; }
declare -A REPO=([indexd]=uc-cdis/indexd [manifestservice]=uc-cdis/manifestservice [sheepdog]=uc-cdis/sheepdog
                 [doiclient]=uc-cdis/doiclient [dosclient]=uc-cdis/dosclient [hsclient]=uc-cdis/hsclient)
declare -A COMMIT=([indexd]=$INDEXD_COMMIT [manifestservice]=$MANIFESTSERVICE_COMMIT [sheepdog]=$SHEEPDOG_COMMIT
                   [doiclient]=$DOICLIENT_COMMIT [dosclient]=$DOSCLIENT_COMMIT [hsclient]=$HSCLIENT_COMMIT)
NAMES=(indexd manifestservice sheepdog doiclient dosclient hsclient)
archives=()
for name in "${NAMES[@]}"; do
    path="$(archive "$name" "${REPO[$name]}" "${COMMIT[$name]}")"
    if [[ ! -r "$path" ]]; then
        say "missing $path."
        say "Make it from GitHub (same commit): git clone https://github.com/${REPO[$name]} src && cd src &&"
        say "  git archive --format=tar.gz --prefix=$(basename "${path%.tar.gz}")/ ${COMMIT[$name]} > $path"
        say "(or point GEN3_THIRDPARTY at the folder holding it)."
        exit 1
    fi
    archives+=("$path")
done

find_python() {
    if [[ -n "${FENCE_PYTHON:-}" ]]; then echo "$FENCE_PYTHON"; return; fi
    local candidate
    for candidate in $(ls -d "$HOME"/.pyenv/versions/3.1[3-9].* 2>/dev/null | sort -V -r) \
            /usr/bin/python3.13 /usr/local/bin/python3.13; do
        [[ -x "$candidate/bin/python" ]] && { echo "$candidate/bin/python"; return; }
        [[ -x "$candidate" && ! -d "$candidate" ]] && { echo "$candidate"; return; }
    done
    say "no Python >= 3.13 found (indexd, manifestservice and sheepdog need it). Install one or set FENCE_PYTHON."
    exit 1
}
python="$(find_python)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 13))' || { say "$python is older than 3.13"; exit 1; }
command -v uv >/dev/null || { say "'uv' is not on PATH (scripts/setup.sh installs it)"; exit 1; }

stamp="$( { sha256sum "${archives[@]}" "$here/build.sh" "$pins_script" | cut -d' ' -f1; readlink -f "$python"; } | sha256sum | cut -c1-16)"
current() {
    [[ -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp" ]] || return 1
    local s; for s in indexd manifestservice sheepdog; do [[ -x "$cache/$s/venv/bin/gunicorn" ]] || return 1; done
}
if [[ $force -eq 0 ]] && current; then echo "$cache"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
command -v flock >/dev/null && flock 9
if [[ $force -eq 0 ]] && current; then echo "$cache"; exit 0; fi  # built while we waited
started=$SECONDS
rm -f "$cache/stamp"

for name in "${NAMES[@]}"; do
    path="$(archive "$name" "${REPO[$name]}" "${COMMIT[$name]}")"
    got="$(gzip -dc "$path" | git get-tar-commit-id 2>/dev/null || true)"
    if [[ "$got" != "${COMMIT[$name]}" ]]; then
        say "$path is commit '${got:-unknown}', expected ${COMMIT[$name]}; refusing to build it"; exit 1
    fi
done

rm -rf "$cache/src"
mkdir -p "$cache/src"
for name in "${NAMES[@]}"; do
    tar -xzf "$(archive "$name" "${REPO[$name]}" "${COMMIT[$name]}")" -C "$cache/src"
    ln -sfn "$name-${COMMIT[$name]:0:8}" "$cache/src/$name"
done

make_venv() { # service [extra local packages...]
    local service="$1"; shift
    local dir="$cache/$service"
    rm -rf "$dir"; mkdir -p "$dir/pins"
    "$python" "$pins_script" "$cache/src/$service" "$dir/pins"
    # Packages the lock takes from git are installed from their pinned archives below.
    local local_pkg
    for local_pkg in "$@"; do
        sed -i "/^$local_pkg\( \|=\|$\)/d" "$dir/pins/requirements.txt" "$dir/pins/constraints.txt"
    done
    UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$python" "$dir/venv"
    local paths=()
    for local_pkg in "$@"; do paths+=("$cache/src/$local_pkg"); done
    # The service itself is not installed (Poetry build backends); it runs from its source tree.
    VIRTUAL_ENV="$dir/venv" UV_PYTHON_DOWNLOADS=never uv pip install --quiet \
        -r "$dir/pins/requirements.txt" -c "$dir/pins/constraints.txt" "${paths[@]}"
}

say "making indexd's venv ..."
make_venv indexd doiclient dosclient hsclient
say "making manifestservice's venv ..."
make_venv manifestservice
say "making sheepdog's venv ..."
make_venv sheepdog

echo "$stamp" > "$cache/stamp"
say "built in $((SECONDS - started)) s"
echo "$cache"
