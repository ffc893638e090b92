#!/usr/bin/env bash
# Builds the pinned gen3-client from its source snapshot into .cache/gen3-client/bin/gen3-client
# (git-ignored) for the tests, and does nothing when that binary is already current.
#
# Usage: tests/support/gen3client/build.sh [--force]
#
# Environment:
#   GEN3_CLIENT_SOURCE  the source archive (default: ../shared/thirdparty/gen3-client-<tag>.tar.gz
#                       next to the repository). Any `git archive` of the pinned commit works,
#                       e.g. GitHub's https://github.com/uc-cdis/cdis-data-client/archive/<commit>.tar.gz.
#
# The pin (tag and commit) is read from images/notebook/Dockerfile, whose Go build stage
# builds the same commit for the image: one pin for tests and image. The archive's commit is
# checked (`git archive` records it in the tar header), the version file is stamped the way
# upstream's build stamps it, the dependencies come from the Go module proxy and must match
# the snapshot's go.sum (-mod=readonly, `go mod verify`), and the binary is static
# (CGO_ENABLED=0). Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
dockerfile="$root/images/notebook/Dockerfile"
out_dir="$root/.cache/gen3-client"
binary="$out_dir/bin/gen3-client"

dockerfile_arg() { # NAME -> the default of `ARG NAME=...` in the notebook Dockerfile
    awk -F= -v name="$1" '$1 == "ARG " name { print $2; exit }' "$dockerfile"
}
tag="$(dockerfile_arg GEN3_CLIENT_VERSION)"
commit="$(dockerfile_arg GEN3_CLIENT_COMMIT)"
if [[ ! "$commit" =~ ^[0-9a-f]{40}$ || -z "$tag" ]]; then
    echo "gen3client/build.sh: images/notebook/Dockerfile must pin ARG GEN3_CLIENT_VERSION=<tag> and ARG GEN3_CLIENT_COMMIT=<40 hex digits>" >&2
    exit 1
fi
source_archive="${GEN3_CLIENT_SOURCE:-$(dirname "$root")/shared/thirdparty/gen3-client-$tag.tar.gz}"

force=0
[[ "${1:-}" == "--force" ]] && force=1

go_bin="$(command -v go || true)"
if [[ -z "$go_bin" ]]; then
    echo "gen3client/build.sh: 'go' is not on PATH; gen3-client is built from source with Go." >&2
    exit 1
fi
goroot_version_file="$(dirname "$(dirname "$(readlink -f "$go_bin")")")/VERSION"
go_version="$(head -n1 "$goroot_version_file" 2>/dev/null || go env GOVERSION)"
stamp="gen3-client $tag $commit $go_version $(sha256sum "$here/build.sh" | cut -c1-16)"

if [[ $force -eq 0 && -x "$binary" && "$(cat "$binary.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "$binary"
    exit 0
fi

if [[ ! -r "$source_archive" ]]; then
    cat >&2 <<MSG
gen3client/build.sh: the gen3-client source archive $source_archive is missing.
Get the pinned commit ($tag, $commit) as a git archive, e.g.
  git clone https://github.com/uc-cdis/cdis-data-client && git -C cdis-data-client archive --format=tar.gz --prefix=gen3-client-$tag/ $commit > gen3-client-$tag.tar.gz
and point GEN3_CLIENT_SOURCE at it (or put it at the default path above).
MSG
    exit 1
fi
archive_commit="$(gzip -dc "$source_archive" | git get-tar-commit-id || true)"
if [[ "$archive_commit" != "$commit" ]]; then
    echo "gen3client/build.sh: $source_archive is commit '${archive_commit:-unknown}', but images/notebook/Dockerfile pins $commit ($tag); refusing to build it." >&2
    exit 1
fi

mkdir -p "$out_dir/bin"
exec 9>"$out_dir/.build.lock"
command -v flock >/dev/null 2>&1 && flock 9

echo "gen3client/build.sh: building gen3-client $tag ($commit) from $source_archive" >&2
src="$out_dir/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$source_archive" -C "$src" --strip-components=1
# What upstream's build writes (its Dockerfile and .github/scripts/before_install.sh):
# `git rev-parse HEAD` and `git describe --always --tags`, which is the tag at the tagged commit.
printf '%s\n' 'package g3cmd' '' 'const (' "    gitcommit=\"$commit\"" "    gitversion=\"$tag\"" ')' > "$src/gen3-client/g3cmd/gitversion.go"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
(
    cd "$src"
    go mod download
    go mod verify >&2
    go build -o "$binary.tmp" .
)
mv -f "$binary.tmp" "$binary"
echo "$stamp" > "$binary.stamp"
rm -rf "$src"
echo "$binary"
