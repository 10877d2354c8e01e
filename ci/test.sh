#!/usr/bin/env bash
# The matrix driver CI runs: every check of the project, in the current Python environment,
# each step bounded in time, with a summary table at the end.
#
#   bash ci/test.sh                      all steps at ranks 1,2,3,4
#   bash ci/test.sh --np 1,2 --only lint,spec
#   bash ci/test.sh --skip machinery --reports /tmp/reports
#
# Steps: lint (ruff), machinery (tests of plugin/runner/adapters/bench), reference (the
# reference's own tests under mpiexec -n N for each N), spec (python -m conformance run: the
# spec against the reference, reports in <reports>/spec), selftest (faulty backends must be
# caught in a call phase; fails if it cannot run), multihost (the suite across 2 namespace
# hosts on this machine: ci/multihost-check.sh; skipped where namespaces cannot be made), pythons
# (reference tests and spec at 2 ranks under Python 3.10 and 3.13 through tox: ci/pythons.sh;
# a version not found is skipped with a message), planes (each data plane forced: the
# reference's tests at 2 and 4 ranks and the spec with REFERENCE_DATA_PLANE=shm and =mpi, and
# the selftest on shm; the other steps run on auto, which picks per op and size).
# A skipped step exits 77 and does not fail CI.
# Needs: pip install -e ".[test]" (see README). Exit status 0 only when every step passed.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
nps="${CI_TEST_NPS:-1,2,3,4}"
reports="${CI_TEST_REPORTS:-$root/conformance-reports/ci}"
only=""
skip=""
python="${PYTHON:-python}"
step_to_run=""

# The help is the whole header comment (line 2 up to the first line that is not a comment), so
# it grows with the header and cannot stop mid-sentence.
usage() { sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --np) nps="$2"; shift 2 ;;
        --reports) reports="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --skip) skip="$2"; shift 2 ;;
        --run-step) step_to_run="$2"; shift 2 ;;  # internal: one step, in a bounded child
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# shellcheck source=ci/mpi-env.sh
. "$here/mpi-env.sh"
cd "$root" || exit 2
mkdir -p "$reports"

# Minutes each step may take before it is killed (2-core CI runner, 4 ranks oversubscribed).
declare -A budget=([lint]=5 [machinery]=15 [reference]=10 [spec]=15 [selftest]=20 [multihost]=15 [pythons]=20 [planes]=50)

bounded() {
    # bounded MINUTES STEP: run the step in a child of this script, killed after MINUTES
    # (when coreutils timeout exists; timeout cannot run shell functions directly).
    local minutes="$1" step="$2"
    local child=(env CI_TEST_NPS="$nps" CI_TEST_REPORTS="$reports" bash "${BASH_SOURCE[0]}"
                 --run-step "$step")
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=30 "$((minutes * 60))" "${child[@]}"
    else
        "${child[@]}"
    fi
}

wanted() {
    local step="$1"
    if [ -n "$only" ] && [[ ",$only," != *",$step,"* ]]; then return 1; fi
    if [ -n "$skip" ] && [[ ",$skip," == *",$step,"* ]]; then return 1; fi
    return 0
}

step_lint() {
    "$python" -m ruff check . && "$python" -m ruff format --check .
}

step_machinery() {
    "$python" -m pytest -q -p no:cacheprovider tests --ignore=tests/reference \
        --junitxml="$reports/machinery.xml"
}

step_reference() {
    local n status=0
    for n in ${nps//,/ }; do
        echo "--- tests/reference on $n rank(s)"
        "$python" -m conformance.run.launcher -n "$n" --timeout 600 -- \
            "$python" -m pytest -q -p no:cacheprovider --with-mpi tests/reference \
            --junitxml="$reports/reference-np$n.xml" || status=1
    done
    return $status
}

step_spec() {
    "$python" -m conformance run --np "$nps" --report-dir "$reports/spec"
}

step_selftest() {
    # A selftest that cannot run is a failed step, never a skipped one.
    if ! "$python" -c "import conformance.run.selftest"; then
        echo "conformance.run.selftest does not import: the selftest cannot run" >&2
        return 1
    fi
    # The spec step has already run the whole suite against the reference.
    "$python" -m conformance selftest --skip-reference --report-dir "$reports/selftest"
}

step_planes() {
    # Both data planes must pass everything: the default steps ran on auto (shared memory for
    # the payloads and sizes dataplane.AUTO_RANGES names, MPI for the rest); this one forces
    # each plane wherever a payload does not travel inline.
    local n plane status=0
    for plane in shm mpi; do
        export REFERENCE_DATA_PLANE=$plane
        for n in ${nps//,/ }; do
            [ "$n" = 2 ] || [ "$n" = 4 ] || continue
            echo "--- tests/reference on $n rank(s), data plane $plane"
            "$python" -m conformance.run.launcher -n "$n" --timeout 600 -- \
                "$python" -m pytest -q -p no:cacheprovider --with-mpi tests/reference \
                --junitxml="$reports/reference-$plane-np$n.xml" || status=1
        done
        echo "--- spec, data plane $plane"
        "$python" -m conformance run --np "$nps" --report-dir "$reports/spec-$plane" || status=1
    done
    echo "--- selftest, data plane shm"
    REFERENCE_DATA_PLANE=shm "$python" -m conformance selftest --skip-reference \
        --report-dir "$reports/selftest-shm" || status=1
    return $status
}

step_multihost() {
    bash "$here/multihost-check.sh" --reports "$reports/multihost"
}

step_pythons() {
    PYTHON="$python" bash "$here/pythons.sh" 3.10 3.13
}

if [ -n "$step_to_run" ]; then
    "step_$step_to_run"
    exit $?
fi

summary=()
failed=0
for step in lint machinery reference spec selftest planes multihost pythons; do
    wanted "$step" || continue
    echo
    echo "=== $step (budget ${budget[$step]} min)"
    start=$(date +%s)
    bounded "${budget[$step]}" "$step"
    status=$?
    elapsed=$(( $(date +%s) - start ))
    if [ $status -eq 0 ]; then
        verdict="ok"
    elif [ $status -eq 77 ]; then
        verdict="skipped (see its output)"
    else
        verdict="FAILED ($status)"; failed=1
    fi
    [ $status -eq 124 ] && verdict="TIMED OUT after ${budget[$step]} min"
    summary+=("$(printf '%-10s %-28s %5ds' "$step" "$verdict" "$elapsed")")
done

echo
echo "=== summary (reports in $reports)"
printf '%s\n' "${summary[@]}"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
        echo '```'
        printf '%s\n' "${summary[@]}"
        echo '```'
        [ -f "$reports/spec/report.md" ] && cat "$reports/spec/report.md"
    } >> "$GITHUB_STEP_SUMMARY"
fi
exit $failed
