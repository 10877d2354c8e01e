#!/usr/bin/env bash
# The suite across hosts, on one machine (CI step "multihost"; README "Several hosts").
#
#   bash ci/multihost-check.sh [--reports DIR] [--timeout S]
#
# Makes 2 namespace hosts with ci/netns-hosts.sh (reports DIR is private on host 1: what rank 1
# writes there stays on host 1) and, on host 0:
#   1. preflight: every rank (4, two per host) reaches every other at the address it listens on;
#   2. a spec subset at 2 and 4 ranks over the 2 hosts must pass;
#   3. a hang (tests/multihost/cases): the report must hold every rank's stack, and rank 0's log
#      directory a copy of the other host's rank log, while host 1's copy of DIR holds only what
#      host 1 wrote (no file shared between the hosts);
#   4. MLX's ring backend across the hosts (all_sum and send/recv), when MLX is installed: the
#      ring must form and every test end in a verdict (MLX's own deviations are in its report).
# Exit 0 when all pass, 77 when namespaces cannot be made here (the reason is printed).
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
reports="$root/conformance-reports/multihost"
timeout=30
inside=""
python="${PYTHON:-python}"
SUBSET="conformance/specs/test_all_sum.py conformance/specs/test_send_recv.py conformance/specs/test_all_gather.py"
SUBSET_MARKERS="not robust"
MLX_SUBSET="conformance/specs/test_all_sum.py conformance/specs/test_send_recv.py"

while [ $# -gt 0 ]; do
    case "$1" in
        --reports) reports="$(realpath -m "$2")"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --inside) inside=1; shift ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "multihost-check: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -z "$inside" ]; then
    rm -rf "$reports"
    mkdir -p "$reports"
    exec bash "$here/netns-hosts.sh" with 2 --private "$reports" -- \
        bash "$here/multihost-check.sh" --inside --reports "$reports" --timeout "$timeout"
fi

# -- on host 0 ---------------------------------------------------------------------------------
cd "$root" || exit 2
hf="$CONFORMANCE_HOSTFILE"
export hf here reports python MLX_SUBSET
failed=0
summary=()
step() {
    # step NAME SECONDS CMD...: run a bounded step and record its verdict and time.
    local name="$1" budget="$2"; shift 2
    echo
    echo "=== multihost: $name"
    local start; start=$(date +%s)
    if [ "$(type -t "$1")" = function ]; then
        # timeout runs programs, not shell functions: hand the function to a child bash.
        timeout --kill-after=20 "$budget" bash -c "$(declare -f "$1"); $*"
    else
        timeout --kill-after=20 "$budget" "$@"
    fi
    local status=$?
    local verdict="ok"
    [ $status -eq 0 ] || { verdict="FAILED ($status)"; failed=1; }
    [ $status -eq 124 ] && verdict="TIMED OUT after ${budget}s"
    summary+=("$(printf '%-34s %-22s %4ds' "$name" "$verdict" "$(( $(date +%s) - start ))")")
}

step "preflight (4 ranks, 2 hosts)" 120 \
    "$python" -m conformance preflight --hostfile "$hf" --np 4

# shellcheck disable=SC2086
step "spec subset, np 2 and 4" 900 \
    "$python" -m conformance run --hostfile "$hf" --np 2,4 --timeout "$timeout" \
    -m "$SUBSET_MARKERS" --report-dir "$reports/spec" $SUBSET

check_hang() {
    "$python" -m conformance run --hostfile "$hf" --np 2 --timeout 10 --job-margin 60 \
        --report-dir "$reports/hang" tests/multihost/cases/hang_across_hosts.py
    "$python" - "$reports/hang" <<'PY'
import json, sys
from pathlib import Path

base = Path(sys.argv[1])
records = [json.loads(line) for line in (base / "np2" / "results.jsonl").read_text().splitlines()
           if line.strip()]
hung = [r for r in records if r.get("outcome") == "hung"]
assert hung, f"no hung record in {base}: {[r.get('outcome') for r in records]}"
stacks = hung[0].get("stacks") or {}
print(f"hung: {hung[0]['nodeid']}; stacks from ranks {sorted(stacks)}")
for rank, text in sorted(stacks.items()):
    print(f"--- rank {rank} (first lines)\n" + "\n".join(text.splitlines()[:3]))
assert sorted(stacks) == ["0", "1"], f"stacks of ranks {sorted(stacks)}, not 0 and 1"
assert "stall_on_the_last_rank" in stacks["1"], "rank 1's stack does not show where it stalled"
assert "no stack within" not in stacks["0"] + stacks["1"], "a rank's stack did not arrive"
logs = sorted(p.name for p in (base / "np2").rglob("rank*.log"))
print(f"rank logs kept on host 0: {logs}")
assert "rank1.log" in logs, "rank 1's log (host 1) did not reach host 0"
PY
}
step "hang across hosts: all stacks" 300 check_hang

check_private() {
    # What host 1 sees under the reports directory is only what host 1's rank wrote.
    local theirs
    theirs="$(bash "$here/netns-enter.sh" cfhost1 "cd / && find '$reports' -type f | sort")"
    echo "files on host 1 under $reports:"
    echo "${theirs:-  (none)}" | sed 's/^/  /'
    echo "$theirs" | grep -q "rank1.log" || { echo "host 1 has no rank1.log of its own"; return 1; }
    if echo "$theirs" | sed 's#.*/##' | grep -Eqx "rank0.log|results.jsonl|report.*|.*\.out"; then
        echo "host 1 sees files written on host 0: the directory is shared"; return 1
    fi
    echo "host 0 and host 1 each have their own /tmp: $(ls /tmp | wc -l) vs" \
        "$(bash "$here/netns-enter.sh" cfhost1 'ls /tmp | wc -l') entries"
}
step "no file shared between hosts" 60 check_private

check_mlx() {
    # The ring must form across the hosts and every test must end in a verdict; whether MLX
    # conforms is the report's business (its known deviations are the same as on one host).
    # shellcheck disable=SC2086
    "$python" -m conformance run --backend mlx --hostfile "$hf" --np 2 --timeout 20 \
        -m "not robust" --report-dir "$reports/mlx" $MLX_SUBSET
    "$python" - "$reports/mlx/report.json" <<'PY'
import collections, json, sys

report = json.load(open(sys.argv[1]))
records = report["records"]
counts = collections.Counter(r["outcome"] for r in records)
print(f"MLX ring across hosts: {len(records)} of {report['tests_per_np']} tests ended: {dict(counts)}")
assert len(records) == report["tests_per_np"], "not every test ended in a verdict"
assert not counts["hung"] and not counts["crashed"], "the ring hung or crashed across hosts"
assert counts["passed"], "no test passed: the ring did not work across hosts"
PY
}

if "$python" -c "import mlx.core" 2>/dev/null; then
    step "MLX ring across hosts, np 2" 900 check_mlx
else
    echo
    echo "=== multihost: MLX ring across hosts: SKIPPED (MLX is not installed: pip install -e '.[mlx]')"
    summary+=("$(printf '%-34s %-22s' "MLX ring across hosts" "skipped (no MLX)")")
fi

echo
echo "=== multihost summary (reports in $reports)"
printf '%s\n' "${summary[@]}"
exit $failed
