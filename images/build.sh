#!/usr/bin/env bash
# Builds and tags the Gen3 Workspace images (hub, notebook-python, notebook-r) with docker build, and pushes them when asked.
#
# Usage: images/build.sh [--push] [hub|notebook-python|notebook-r ...]   (default: all three)
#
# Environment:
#   IMAGE_REGISTRY               registry/namespace prefix (default quay.io/gen3-workspace)
#   IMAGE_TAG                    tag for every image (default: the version in pyproject.toml)
#   NOTEBOOK_GO_IMAGE            Go image of the notebook's gen3-client build stage (default: the
#                                Dockerfile's). gen3-client's tag and commit are pinned in the
#                                Dockerfile only (one pin for image and tests).
#   NOTEBOOK_PYTHON_BASE_IMAGE   base of notebook-python (default below)
#   NOTEBOOK_R_BASE_IMAGE        base of notebook-r (default below)
#   HUB_PYTHON_IMAGE             base of the hub image (default: the Dockerfile's)
# Every image must be <image>:<tag>@sha256:<digest>; a tag alone or the all-zero placeholder
# digest is refused before anything is built.
#
# Exit codes: 0 built (and pushed); 2 no Docker engine; 64 bad usage or an unpinned image;
# docker's own non-zero code for a failed build or push.
set -euo pipefail

# The same docker-stacks build date for both flavors, so Python and R users get the same
# Jupyter stack. images/notebook/Dockerfile's BASE_IMAGE default must equal the Python one
# (tests/images/test_build_script.py checks both).
# UNVERIFIED digests: no registry was reachable where they were written and no public record of
# them was found, so both carry the all-zero placeholder this script refuses. Fill them in
# (docs/images.md, "Releasing"); images/notebook/Dockerfile's BASE_IMAGE must follow.
DEFAULT_NOTEBOOK_PYTHON_BASE_IMAGE="quay.io/jupyter/scipy-notebook:2025-07-07@sha256:0000000000000000000000000000000000000000000000000000000000000000"
DEFAULT_NOTEBOOK_R_BASE_IMAGE="quay.io/jupyter/r-notebook:2025-07-07@sha256:0000000000000000000000000000000000000000000000000000000000000000"
PLACEHOLDER_DIGEST="sha256:0000000000000000000000000000000000000000000000000000000000000000"
ALL_TARGETS=(hub notebook-python notebook-r)

usage() {
    # The header comment above, minus the shebang and the '# ' prefixes.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"

project_version() {
    # The [project] table's version; awk rather than a TOML parser so a bare CI runner works.
    awk -F'"' '/^\[/ { in_project = ($0 == "[project]") }
               in_project && /^version[[:space:]]*=/ { print $2; exit }' "${repo_root}/pyproject.toml"
}

push=false
targets=()
for arg in "$@"; do
    case "${arg}" in
        --push) push=true ;;
        -h | --help) usage; exit 0 ;;
        hub | notebook-python | notebook-r) targets+=("${arg}") ;;
        *) echo "build.sh: unknown argument '${arg}'" >&2; usage >&2; exit 64 ;;
    esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${ALL_TARGETS[@]}")
fi

# Refuses, before any build, an image that is not <image>:<tag>@sha256:<64 hex> or that still
# carries the placeholder digest.
require_pinned() {
    local what="$1" image="$2"
    if [[ ! "${image}" =~ ^[^@[:space:]]+:[^@[:space:]]+@sha256:[0-9a-f]{64}$ ]]; then
        echo "build.sh: ${what} '${image}' is not pinned by digest: give it as <image>:<tag>@sha256:<digest>." >&2
        exit 64
    fi
    if [[ "${image}" == *"@${PLACEHOLDER_DIGEST}" ]]; then
        echo "build.sh: ${what} '${image%@*}' still has the placeholder digest: set it to the real one, from" >&2
        echo "  docker buildx imagetools inspect ${image%@*} --format '{{json .Manifest.Digest}}'" >&2
        exit 64
    fi
}

dockerfile_default() {
    # The ARG default of a Dockerfile: what docker build uses when no --build-arg overrides it.
    awk -F= -v name="$2" '$1 == "ARG " name { print substr($0, length($1) + 2); exit }' "${repo_root}/$1"
}

for target in "${targets[@]}"; do
    case "${target}" in
        hub) require_pinned HUB_PYTHON_IMAGE "${HUB_PYTHON_IMAGE:-$(dockerfile_default images/hub/Dockerfile PYTHON_IMAGE)}" ;;
        notebook-python) require_pinned NOTEBOOK_PYTHON_BASE_IMAGE "${NOTEBOOK_PYTHON_BASE_IMAGE:-${DEFAULT_NOTEBOOK_PYTHON_BASE_IMAGE}}" ;;
        notebook-r) require_pinned NOTEBOOK_R_BASE_IMAGE "${NOTEBOOK_R_BASE_IMAGE:-${DEFAULT_NOTEBOOK_R_BASE_IMAGE}}" ;;
    esac
    if [[ "${target}" == notebook-* ]]; then
        require_pinned NOTEBOOK_GO_IMAGE "${NOTEBOOK_GO_IMAGE:-$(dockerfile_default images/notebook/Dockerfile GO_IMAGE)}"
    fi
done

if ! command -v docker >/dev/null 2>&1; then
    echo "build.sh: 'docker' is not installed. Build the images where a Docker engine runs (a CI runner or a workstation); nothing was built." >&2
    exit 2
fi
if ! docker info >/dev/null 2>&1; then
    echo "build.sh: no Docker engine answers ('docker info' failed). Start Docker or build where one runs (a CI runner or a workstation); nothing was built." >&2
    exit 2
fi

registry="${IMAGE_REGISTRY:-quay.io/gen3-workspace}"
registry="${registry%/}"
tag="${IMAGE_TAG:-$(project_version)}"
if [[ ! "${tag}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
    echo "build.sh: '${tag}' is not a valid image tag (set IMAGE_TAG, or fix the version in pyproject.toml)." >&2
    exit 64
fi

common_args=(--pull --build-arg "VERSION=${tag}" --label "org.opencontainers.image.version=${tag}")
if revision="$(git -C "${repo_root}" rev-parse HEAD 2>/dev/null)"; then
    common_args+=(--label "org.opencontainers.image.revision=${revision}")
fi
notebook_args=()
if [[ -n "${NOTEBOOK_GO_IMAGE:-}" ]]; then
    notebook_args+=(--build-arg "GO_IMAGE=${NOTEBOOK_GO_IMAGE}")
fi

built=()
build() {
    local name="$1" dockerfile="$2"
    shift 2
    local image="${registry}/${name}:${tag}"
    echo "build.sh: building ${image}"
    docker build --file "${repo_root}/${dockerfile}" --tag "${image}" "${common_args[@]}" "$@" "${repo_root}"
    built+=("${image}")
}

for target in "${targets[@]}"; do
    case "${target}" in
        hub)
            hub_args=()
            if [[ -n "${HUB_PYTHON_IMAGE:-}" ]]; then
                hub_args+=(--build-arg "PYTHON_IMAGE=${HUB_PYTHON_IMAGE}")
            fi
            build hub images/hub/Dockerfile ${hub_args[@]+"${hub_args[@]}"}
            ;;
        notebook-python)
            build notebook-python images/notebook/Dockerfile ${notebook_args[@]+"${notebook_args[@]}"} \
                --build-arg "BASE_IMAGE=${NOTEBOOK_PYTHON_BASE_IMAGE:-${DEFAULT_NOTEBOOK_PYTHON_BASE_IMAGE}}"
            ;;
        notebook-r)
            build notebook-r images/notebook/Dockerfile ${notebook_args[@]+"${notebook_args[@]}"} \
                --build-arg "BASE_IMAGE=${NOTEBOOK_R_BASE_IMAGE:-${DEFAULT_NOTEBOOK_R_BASE_IMAGE}}"
            ;;
    esac
done

if [[ "${push}" == true ]]; then
    # Push only after every build succeeded: a release is all images or none.
    for image in "${built[@]}"; do
        echo "build.sh: pushing ${image}"
        docker push "${image}"
    done
fi

printf 'build.sh: built %s\n' "${built[@]}"
