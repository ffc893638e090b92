#!/usr/bin/env bash
# What docker-stacks' start.sh does with a hook folder before it starts the server, for tests
# without a container runtime: its run-hooks function (source *.sh, run executables, a failed
# hook does not stop the start), then exec the server command.
#
# Usage: run-hooks.sh <hook folder> [command args...]
set -u

_log() { echo "$@" >&2; }

run-hooks() {
    if [[ ! -d "${1}" ]]; then
        return
    fi
    _log "${0}: running hooks in: ${1} as uid: $(id -u) gid: $(id -g)"
    for f in "${1}/"*; do
        [ -e "${f}" ] || continue
        case "${f}" in
            *.sh)
                _log "${0}: sourcing shell script: ${f}"
                # shellcheck disable=SC1090
                source "${f}" || _log "${0}: ${f} has failed, continuing execution"
                ;;
            *)
                if [ -x "${f}" ]; then
                    _log "${0}: running executable: ${f}"
                    "${f}" || _log "${0}: ${f} has failed, continuing execution"
                else
                    _log "${0}: ignoring non-executable: ${f}"
                fi
                ;;
        esac
    done
    _log "${0}: done running hooks in: ${1}"
}

run-hooks "${1}"
shift
if [[ $# -gt 0 ]]; then
    exec "$@"
fi
