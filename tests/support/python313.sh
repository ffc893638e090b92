# Sourced by the test beds' build scripts: find_python WHO prints a Python >= 3.13 (the floor of
# Fence 13, indexd, manifestservice and sheepdog), from $FENCE_PYTHON, pyenv or the system.
find_python() {
    if [[ -n "${FENCE_PYTHON:-}" ]]; then echo "$FENCE_PYTHON"; return; fi
    local candidate
    for candidate in $(ls -d "$HOME"/.pyenv/versions/3.1[3-9].* 2>/dev/null | sort -V -r) \
            /usr/bin/python3.13 /usr/local/bin/python3.13; do
        [[ -x "$candidate/bin/python" ]] && { echo "$candidate/bin/python"; return; }
        [[ -x "$candidate" && ! -d "$candidate" ]] && { echo "$candidate"; return; }
    done
    say "no Python >= 3.13 found ($1 needs it). Install one (e.g. pyenv install 3.13) or set FENCE_PYTHON."
    exit 1
}
