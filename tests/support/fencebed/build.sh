#!/usr/bin/env bash
# Builds the real Fence + arborist test bed into .cache/fence/ (git-ignored): unpacks the pinned
# sources, compiles arborist with Go and makes Fence's venv pinned to its own poetry.lock. Does
# nothing when the cache is current.
#
# Usage: tests/support/fencebed/build.sh [--force]
#   FENCE_TARBALL, ARBORIST_TARBALL  override the archives' paths
#                                    (default ../shared/thirdparty/<file> next to the repo)
#   FENCE_PYTHON                     a Python >= 3.13 to build Fence's venv with
#                                    (default: the newest ~/.pyenv/versions/3.1[3-9].*)
#
# Needs: go, uv, a Python >= 3.13 already on the machine (the registries serve no Python
# builds) and Debian's postgresql (scripts/setup.sh installs it). Prints the cache directory
# on stdout; progress goes to stderr.
set -euo pipefail

FENCE_COMMIT=d03fe03604538dd9b76556c149fe2cfd99caf732      # uc-cdis/fence 13.3.0
ARBORIST_COMMIT=708d91019bea32afdc9a186b5f4eb475e57e6bc3   # uc-cdis/arborist 2026-03-24

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cache="$root/.cache/fence"
# Worktrees sit beside the main checkout, so ../shared is looked up from the repo and its parent.
thirdparty="${GEN3_THIRDPARTY:-$root/../shared/thirdparty}"
fence_tar="${FENCE_TARBALL:-$thirdparty/fence-${FENCE_COMMIT:0:8}.tar.gz}"
arborist_tar="${ARBORIST_TARBALL:-$thirdparty/arborist-${ARBORIST_COMMIT:0:8}.tar.gz}"
force=0; [[ "${1:-}" == "--force" ]] && force=1

say() { echo "fencebed: $*" >&2; }

need_archive() { # path repo commit
    [[ -r "$1" ]] && return 0
    say "missing $1."
    say "Make it from GitHub (same commit): git clone https://github.com/$2 src && cd src &&"
    say "  git archive --format=tar.gz --prefix=$(basename "${1%.tar.gz}")/ $3 > $1"
    say "(or point ${4} at it)."
    exit 1
}
need_archive "$fence_tar" uc-cdis/fence "$FENCE_COMMIT" FENCE_TARBALL
need_archive "$arborist_tar" uc-cdis/arborist "$ARBORIST_COMMIT" ARBORIST_TARBALL

source "$(dirname "${BASH_SOURCE[0]}")/../python313.sh"
python="$(find_python "Fence 13")"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 13))' ||
    { say "$python is older than 3.13; Fence 13 needs >= 3.13"; exit 1; }

command -v go >/dev/null || { say "'go' is not on PATH; arborist is built with Go"; exit 1; }
command -v uv >/dev/null || { say "'uv' is not on PATH (scripts/setup.sh installs it)"; exit 1; }

# Everything that decides the result: both archives, this script, the pin converter, the
# toolchains. The cached path reads files only (no `go env`, no Python start-up).
stamp="$( { sha256sum "$fence_tar" "$arborist_tar" "$here/build.sh" "$here/lock_to_pins.py" | cut -d' ' -f1
            readlink -f "$python"; head -n1 "$(dirname "$(dirname "$(readlink -f "$(command -v go)")")")/VERSION" 2>/dev/null
          } | sha256sum | cut -c1-16)"
if [[ $force -eq 0 && -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp" \
      && -x "$cache/bin/arborist" && -x "$cache/venv/bin/python" ]]; then
    echo "$cache"; exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
command -v flock >/dev/null && flock 9
started=$SECONDS
rm -f "$cache/stamp"

check_commit() { # archive commit
    local got
    got="$(gzip -dc "$1" | git get-tar-commit-id 2>/dev/null || true)"
    if [[ "$got" != "$2" ]]; then
        say "$1 is commit '${got:-unknown}', expected $2; refusing to build it"; exit 1
    fi
}
check_commit "$fence_tar" "$FENCE_COMMIT"
check_commit "$arborist_tar" "$ARBORIST_COMMIT"

rm -rf "$cache/src" "$cache/bin" "$cache/venv" "$cache/pins"
mkdir -p "$cache/src" "$cache/bin" "$cache/pins"
tar -xzf "$fence_tar" -C "$cache/src"
tar -xzf "$arborist_tar" -C "$cache/src"
ln -sfn "fence-${FENCE_COMMIT:0:8}" "$cache/src/fence"
ln -sfn "arborist-${ARBORIST_COMMIT:0:8}" "$cache/src/arborist"

say "building arborist with $(go version | awk '{print $3}') ..."
(
    cd "$cache/src/arborist"
    # go.mod says go 1.17 but its pinned golang.org/x/crypto needs 1.23; newer Go toolchains
    # refuse that mismatch under -mod=readonly. Only the directive changes: go.sum still
    # verifies every dependency exactly as upstream pinned it.
    go mod edit -go=1.23.0
    GOTOOLCHAIN=local CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath \
        -ldflags "-s -w -X github.com/uc-cdis/arborist/arborist/version.GitCommit=$ARBORIST_COMMIT" \
        -o "$cache/bin/arborist.tmp" .
)
mv -f "$cache/bin/arborist.tmp" "$cache/bin/arborist"

say "making Fence's venv with $python, pinned to its poetry.lock ..."
"$python" "$here/lock_to_pins.py" "$cache/src/fence" "$cache/pins"
UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$python" "$cache/venv"
# Fence's own package is not installed (its build backend is all of Poetry); the fixtures run
# it from the source tree on PYTHONPATH, as fence-create has to be anyway.
VIRTUAL_ENV="$cache/venv" UV_PYTHON_DOWNLOADS=never uv pip install --quiet \
    -r "$cache/pins/requirements.txt" -c "$cache/pins/constraints.txt"

echo "$stamp" > "$cache/stamp"
say "built in $((SECONDS - started)) s"
echo "$cache"
