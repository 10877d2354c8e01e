#!/usr/bin/env bash
# The oldest and newest supported Pythons (CI step "pythons"): the reference's own tests and the
# spec at 2 ranks under each, through tox (envs py310-np2, py313-np2; tox is in the [test] extra).
#
#   bash ci/pythons.sh [VERSION...]        default: 3.10 3.13
#
# Interpreters are looked for as pythonX.Y on PATH (a pyenv shim that cannot run it does not
# count), then in pyenv's versions folder ($PYENV_ROOT, default ~/.pyenv), then in /usr/bin and
# /usr/local/bin; each candidate must run and report that version. tox gets the ones found with
# --discover. A version found nowhere is skipped with a message naming where it was looked for;
# exit status 0 only when every version found passed (and at least one was found, else 77).
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python}"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.13)
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"

is_version() {
    # is_version PATH X.Y: PATH runs and is Python X.Y.
    [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
    local got
    got="$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || return 1
    [ "$got" = "$2" ]
}

find_python() {
    local v="$1" candidate
    for candidate in "python$v" "$pyenv_root"/versions/"$v".*/bin/"python$v" \
        /usr/bin/"python$v" /usr/local/bin/"python$v"; do
        if is_version "$candidate" "$v"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! "$python" -m tox --version >/dev/null 2>&1; then
    echo "pythons: tox is not installed in this environment: pip install -e '.[test]'"
    exit 2
fi

found=()
envs=()
for v in "${versions[@]}"; do
    if path="$(find_python "$v")"; then
        echo "pythons: Python $v is $path"
        found+=("$path")
        envs+=("py${v/./}-np2")
    else
        echo "pythons: SKIPPED Python $v: not found as python$v on PATH, in" \
            "$pyenv_root/versions/$v.*, /usr/bin or /usr/local/bin"
    fi
done
if [ ${#found[@]} -eq 0 ]; then
    echo "pythons: no interpreter to test"
    exit 77
fi

cd "$root" || exit 2
envlist="$(IFS=,; echo "${envs[*]}")"
echo "+ tox --discover ${found[*]} -e $envlist"
# skip_missing_interpreters is on in tox.ini: an env tox still cannot match must fail here.
"$python" -m tox --discover "${found[@]}" --skip-missing-interpreters false -e "$envlist"
