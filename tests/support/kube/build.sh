#!/usr/bin/env bash
# Builds the pinned kube-apiserver and etcd that the Kubernetes test bed runs, into
# .cache/kube/bin/ (git-ignored), and does nothing when they are already built.
#
# Usage: tests/support/kube/build.sh [--force]
#
# Neither binary is packaged in the registries this project can reach, so both are
# compiled from their published Go modules through the wrapper modules beside this
# script (apiserver/, etcd/). The wrappers' go.sum files are committed and the build
# runs with -mod=readonly, so the same sources are built every time. The Go module
# and build caches stay at Go's default locations so later runs on the same machine
# reuse them; only the binaries go to .cache/kube/bin.
#
# Prints the bin directory on stdout when done; progress goes to stderr.
set -euo pipefail

# The pinned versions. Changing one means regenerating that wrapper's go.mod/go.sum
# (see the comment in apiserver/go.mod for how the replaces are derived).
KUBE_VERSION="v1.37.2"
ETCD_VERSION="v3.6.16"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin_dir="$root/.cache/kube/bin"

force=0
if [[ "${1:-}" == "--force" ]]; then
    force=1
fi

# The stamp covers everything that decides what ends up in a binary: the pinned
# version, the wrapper sources and the Go toolchain. Reading go's version from
# $GOROOT/VERSION avoids spawning `go env` (~50 ms) on the cached path.
go_bin="$(command -v go || true)"
if [[ -z "$go_bin" ]]; then
    echo "build.sh: 'go' is not on PATH; the Kubernetes test bed is built with Go >= 1.26." >&2
    exit 1
fi
goroot_version_file="$(dirname "$(dirname "$(readlink -f "$go_bin")")")/VERSION"
if [[ -r "$goroot_version_file" ]]; then
    go_version="$(head -n1 "$goroot_version_file")"
else
    go_version="$(go env GOVERSION)"
fi

stamp_for() { # name version
    local name="$1" version="$2"
    local sources
    sources="$(cat "$here/$name/go.mod" "$here/$name/go.sum" "$here/$name/main.go" | sha256sum | cut -c1-16)"
    printf '%s %s %s %s\n' "$name" "$version" "$go_version" "$sources"
}

is_current() { # binary name version
    local binary="$1" name="$2" version="$3"
    [[ $force -eq 0 && -x "$bin_dir/$binary" && -f "$bin_dir/$binary.stamp" ]] &&
        [[ "$(cat "$bin_dir/$binary.stamp")" == "$(stamp_for "$name" "$version")" ]]
}

if is_current kube-apiserver apiserver "$KUBE_VERSION" && is_current etcd etcd "$ETCD_VERSION"; then
    echo "$bin_dir"
    exit 0
fi

mkdir -p "$bin_dir"

# Two pytest sessions (or a developer and CI) may start the build at once; a lock
# keeps them from linking into the same file, and the second one then finds the
# stamps current and returns.
exec 9>"$bin_dir/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# GOTOOLCHAIN=local: never fetch another toolchain (the wrappers say go 1.26.0).
# CGO_ENABLED=0: static binaries as upstream ships them, and no C compiler needed.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"

build_one() { # binary name version ldflags...
    local binary="$1" name="$2" version="$3"
    shift 3
    if is_current "$binary" "$name" "$version"; then
        return 0
    fi
    local started=$SECONDS
    echo "build.sh: building $binary $version with $go_version (a cold build takes minutes) ..." >&2
    rm -f "$bin_dir/$binary.stamp"
    # Build next to the target and rename, so a half-written binary is never run.
    (cd "$here/$name" && go build -ldflags="-s -w $*" -o "$bin_dir/$binary.tmp" .)
    mv -f "$bin_dir/$binary.tmp" "$bin_dir/$binary"
    stamp_for "$name" "$version" >"$bin_dir/$binary.stamp"
    echo "build.sh: built $binary in $((SECONDS - started)) s" >&2
}

# Stamp the version the way Kubernetes' own build does (hack/lib/version.sh), so
# /version reports the real release instead of v0.0.0-master.
kube_minor="${KUBE_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_ldflags=()
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=(
        "-X $pkg.gitVersion=$KUBE_VERSION"
        "-X $pkg.gitMajor=1"
        "-X $pkg.gitMinor=$kube_minor"
        "-X $pkg.gitTreeState=clean"
    )
done

build_one etcd etcd "$ETCD_VERSION"
build_one kube-apiserver apiserver "$KUBE_VERSION" "${kube_ldflags[@]}"

echo "$bin_dir"
