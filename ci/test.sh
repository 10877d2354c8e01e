#!/usr/bin/env bash
# The matrix driver: the project's checks in the current Python environment, each step bounded
# in time, with a table of what each step took at the end (also written to <reports>/steps.tsv).
#
#   bash ci/test.sh                      the quick set (under 10 minutes on a 2-core machine)
#   bash ci/test.sh --full               everything (what .ci/run runs, under 25 minutes)
#   bash ci/test.sh --full --np 1,2 --only lint,spec
#   bash ci/test.sh --skip machinery --reports /tmp/reports
#
# Steps (quick / full): lint (ruff); machinery (tests/ minus tests/reference: plugin, runner,
# adapters, bench, selftest; the quick set leaves out the tests marked slow); reference (the
# reference's own tests under mpiexec: 2 ranks / each rank count of --np, two at a time); spec (python -m conformance run at --np, reports in <reports>/spec);
# selftest (faulty backends must be caught in a call phase, 2 jobs at once: a sample of one fault
# of each kind / every fault; fails if it cannot run); full only: planes (each data plane forced,
# REFERENCE_DATA_PLANE=shm and =mpi: the reference's collective transport and buffer tests at 2
# and 4 ranks and the spec's collective and size-sweep modules at 2, 3 and 4 ranks; the other
# steps run on auto, which picks per op and size), multihost (the suite across
# 2 namespace hosts on this machine: ci/multihost-check.sh; skipped where namespaces cannot be
# made), pythons (reference tests and spec at 2 ranks under Python 3.10 and 3.13 through tox:
# ci/pythons.sh; a version not found is skipped with a message).
# Each step's budget (seconds) is in ci/budgets.tsv; a step is killed after 3x its budget, and the
# run ends with the budget check (tests/ci/test_budgets.py: fails when a step took over 2x).
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
mode="${CI_TEST_MODE:-quick}"

# The help is the whole header comment (line 2 up to the first line that is not a comment), so
# it grows with the header and cannot stop mid-sentence.
usage() { sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --np) nps="$2"; shift 2 ;;
        --reports) reports="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --skip) skip="$2"; shift 2 ;;
        --full) mode="full"; shift ;;
        --run-step) step_to_run="$2"; shift 2 ;;  # internal: one step, in a bounded child
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# shellcheck source=ci/mpi-env.sh
. "$here/mpi-env.sh"
cd "$root" || exit 2
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
    # An environment that forbids bytecode makes every process recompile what it imports (and
    # pytest redo its assertion rewriting): keep it in the runner's cache, outside the tree.
    unset PYTHONDONTWRITEBYTECODE
    PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$("$python" -c \
        'from conformance.run.launcher import PYCACHE_DIR; print(PYCACHE_DIR)')}"
    export PYTHONPYCACHEPREFIX
fi
mkdir -p "$reports"

# Seconds each step should take in this mode (ci/budgets.tsv; "-": the mode skips the step), in
# the order the steps run.
steps=()
declare -A budget=()
column=$([ "$mode" = full ] && echo 3 || echo 2)
while read -r step seconds; do
    [ "$seconds" = - ] && continue
    steps+=("$step")
    budget[$step]=$seconds
done < <(awk -v c="$column" '!/^#/ && NF { print $1, $c }' "$here/budgets.tsv")
for step in ${only//,/ } ${skip//,/ }; do
    if [ -z "${budget[$step]:-}" ]; then
        echo "no step $step in the $mode set (steps: ${steps[*]}; --full runs them all)" >&2
        exit 2
    fi
done

bounded() {
    # bounded SECONDS STEP: run the step in a child of this script, killed after SECONDS
    # (when coreutils timeout exists; timeout cannot run shell functions directly).
    local seconds="$1" step="$2"
    local child=(env CI_TEST_NPS="$nps" CI_TEST_REPORTS="$reports" CI_TEST_MODE="$mode"
                 bash "${BASH_SOURCE[0]}" --run-step "$step")
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=30 "$seconds" "${child[@]}"
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
    # The quick set leaves out the tests marked slow (end-to-end runs of the runner, selftest,
    # bench and documented commands); --full runs them all.
    local marks=()
    [ "$mode" = full ] || marks=(-m "not slow")
    "$python" -m pytest -q -p no:cacheprovider tests --ignore=tests/reference "${marks[@]}" \
        --junitxml="$reports/machinery.xml"
}

reference_at() {
    # reference_at N: the reference's own tests on N ranks, output in <reports>/reference-npN.out.
    "$python" -m conformance.run.launcher -n "$1" --timeout 600 -- \
        "$python" -m pytest -q -p no:cacheprovider --with-mpi tests/reference \
        --junitxml="$reports/reference-np$1.xml" > "$reports/reference-np$1.out" 2>&1
}

step_reference() {
    # Quick: 2 ranks (the smallest world with peers); full: every rank count, two at a time
    # (the largest beside the smallest): most of these tests wait on a deadline, so a rank count
    # alone keeps well under one core busy (2 ranks: 17 s of CPU in 77 s).
    local status=0 counts
    read -r -a counts <<< "$(tr ',' '\n' <<< "$nps" | sort -n | tr '\n' ' ')"
    [ "$mode" = full ] || counts=(2)
    local low=0 high=$(( ${#counts[@]} - 1 )) pair n pids
    while [ "$low" -le "$high" ]; do
        pair=("${counts[$high]}")
        [ "$low" -lt "$high" ] && pair+=("${counts[$low]}")
        pids=()
        for n in "${pair[@]}"; do
            reference_at "$n" &
            pids+=($!)
        done
        for i in "${!pair[@]}"; do
            echo "--- tests/reference on ${pair[$i]} rank(s)"
            if wait "${pids[$i]}"; then
                tail -n 3 "$reports/reference-np${pair[$i]}.out"
            else
                status=1
                cat "$reports/reference-np${pair[$i]}.out"
            fi
        done
        low=$(( low + 1 ))
        high=$(( high - 1 ))
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
    # The spec step has already run the whole suite against the reference. Two fault jobs at
    # once: most of a fault job is waiting (job start, a backend deadline running out).
    local sample=()
    if [ "$mode" != full ]; then
        # One fault of each kind: a wrong result, a raise on one rank, a hang the backend's
        # deadline ends, a hang on some calls only (3+ ranks), a dtype, point-to-point, groups,
        # init, a fault above a size threshold.
        local fault
        for fault in all_sum_drops_last_rank all_max_raises_on_last_rank hang_all_min \
            all_sum_deadlocks_sometimes int8_sum_saturates recv_any_source \
            subgroup_rank_off_by_one init_not_cached all_gather_swaps_blocks_large; do
            sample+=(--fault "$fault")
        done
    fi
    "$python" -m conformance selftest --skip-reference --jobs 2 "${sample[@]}" \
        --report-dir "$reports/selftest"
}

step_planes() {
    # The default steps ran on auto (shared memory for the payloads and sizes
    # dataplane.AUTO_RANGES names, MPI for the rest); this one forces each plane wherever a
    # payload does not travel inline, on the tests whose payloads take a data plane: the
    # reference's transport tests and the spec's collective and size-sweep modules. Groups of two
    # and of more pick differently (dataplane.PAIR_RANGES), hence 2 and 3+ ranks.
    local n plane status=0
    # (test_shm.py and test_scatter.py choose their plane per test: the reference step ran them.)
    local reference_tests=(tests/reference/test_collectives_transport.py
                           tests/reference/test_buffers.py)
    local specs=conformance/specs
    local spec_modules=("$specs/test_size_sweep.py" "$specs/test_all_sum.py"
                        "$specs/test_all_gather.py" "$specs/test_sum_scatter.py"
                        "$specs/test_all_max_all_min.py" "$specs/test_layouts.py")
    for plane in shm mpi; do
        export REFERENCE_DATA_PLANE=$plane
        for n in 2 4; do
            echo "--- reference transport tests on $n ranks, data plane $plane"
            "$python" -m conformance.run.launcher -n "$n" --timeout 600 -- \
                "$python" -m pytest -q -p no:cacheprovider --with-mpi "${reference_tests[@]}" \
                --junitxml="$reports/reference-$plane-np$n.xml" || status=1
        done
        echo "--- spec collectives and size sweep, data plane $plane"
        "$python" -m conformance run --np 2,3,4 --report-dir "$reports/spec-$plane" \
            "${spec_modules[@]}" || status=1
    done
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
table="$reports/steps.tsv"
printf '# step\tmode\tstatus\tseconds\tbudget\n' > "$table"
for step in "${steps[@]}"; do
    wanted "$step" || continue
    echo
    echo "=== $step (budget ${budget[$step]} s, $mode)"
    start=$(date +%s)
    bounded "$((3 * budget[$step]))" "$step"
    status=$?
    elapsed=$(( $(date +%s) - start ))
    if [ $status -eq 0 ]; then
        verdict="ok"
    elif [ $status -eq 77 ]; then
        verdict="skipped (see its output)"
    else
        verdict="FAILED ($status)"; failed=1
    fi
    [ $status -eq 124 ] && verdict="TIMED OUT after $((3 * budget[$step])) s"
    summary+=("$(printf '%-10s %-28s %5ds  (budget %ss)' "$step" "$verdict" "$elapsed" \
        "${budget[$step]}")")
    printf '%s\t%s\t%s\t%s\t%s\n' "$step" "$mode" "$status" "$elapsed" "${budget[$step]}" >> "$table"
done

# The budget check reads the table just written: a step over 2x its budget fails the run.
if [ ${#summary[@]} -gt 0 ]; then
    echo
    echo "=== budget check ($table)"
    if CI_STEP_TABLE="$table" "$python" -m pytest -q -p no:cacheprovider tests/ci/test_budgets.py; then
        summary+=("$(printf '%-10s %-28s' budget "ok (every step within 2x)")")
    else
        summary+=("$(printf '%-10s %-28s' budget "FAILED (a step over 2x)")"); failed=1
    fi
fi

echo
echo "=== summary, $mode (reports in $reports)"
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
