#!/usr/bin/env bash
# K "hosts" on this one machine, to test the suite across hosts without a cluster.
#
#   bash ci/netns-hosts.sh with K [--private DIR]... -- CMD...
#       make K hosts, run CMD on host 0 (the runner's host), remove everything (also on
#       error or Ctrl-C); CMD sees CONFORMANCE_HOSTFILE (one line per host, MPICH format)
#   bash ci/netns-hosts.sh check [--reports DIR]
#       the CI checks (ci/test.sh step "multihost"), see check() below
#   bash ci/netns-hosts.sh enter HOST CMD...
#       run CMD on HOST of the running set (Hydra's launcher: HYDRA_LAUNCHER_EXEC points here)
#
# A host is a network namespace (its own interfaces: lo and eth0 with 10.231.0.<i+1>/24), a
# mount namespace (its own /tmp, /dev/shm and /etc/hosts naming every host; on hosts other than
# 0 also an empty tmpfs over each --private DIR, so files written there are not shared) and a
# UTS namespace (hostname cfhost<i>). The eth0s are joined by a bridge in a namespace of its
# own: nothing is added to the machine's own network namespace and nothing is routed off the
# machine. The code (the repository and the virtualenv, under /tmp too) stays visible everywhere,
# as on a cluster whose hosts share one image. MPI is forced onto TCP (libfabric's tcp provider, no shared memory)
# and Hydra starts its proxies with "enter" above. Needs root, ip (iproute2), unshare and
# nsenter (util-linux); without them "with" and "check" say why and exit 77 (skipped).
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
SKIPPED=77
SUBNET=10.231.0

die() { echo "netns-hosts: $*" >&2; exit 2; }

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# -- can namespaces be made here? -------------------------------------------------------------
why_not() {
    # Prints the reason namespaces cannot be made; silent when they can.
    [ "$(id -u)" = 0 ] || { echo "not root"; return; }
    local tool
    for tool in ip unshare nsenter mount umount; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$tool is missing (apt-get install -y iproute2 util-linux)"; return; }
    done
    local probe="cfprobe$$"
    if ! ip netns add "$probe" 2>/dev/null; then
        echo "ip netns add fails (no CAP_SYS_ADMIN / network namespaces in this container)"
        return
    fi
    ip netns del "$probe"
    if ! unshare --mount --uts true 2>/dev/null; then
        echo "unshare --mount --uts fails (mount namespaces not permitted)"
    fi
}

# -- making and removing hosts ------------------------------------------------------------------
shared_code_under_tmp() {
    # The repository and the active virtualenv when they live under /tmp (each host gets a /tmp
    # of its own, which would hide them); paths outside /tmp are visible everywhere anyway.
    local dir
    for dir in "$root" "${VIRTUAL_ENV:-}"; do
        case "$dir" in
            /tmp/*) case "$dir/" in "$root"/*) [ "$dir" = "$root" ] || continue ;; esac
                    echo "$dir" ;;
        esac
    done
}

state=""      # /run/conformance-hosts-<id>: namespace files, hosts file, hostfile
prefix=""     # netns names: <prefix>h<i>, switch <prefix>sw

up() {
    # up K PRIVATE_DIR...
    local k="$1"; shift
    local id="cf$$"
    prefix="$id"
    state="/run/conformance-hosts-$id"
    mkdir -p "$state" || return 1
    echo "$k" > "$state/count"
    ip netns add "${prefix}sw" || return 1
    ip -n "${prefix}sw" link add br0 type bridge || return 1
    ip -n "${prefix}sw" link set br0 up || return 1
    {
        echo "127.0.0.1 localhost"
        for ((i = 0; i < k; i++)); do echo "$SUBNET.$((i + 1)) cfhost$i"; done
    } > "$state/hosts"
    : > "$state/hostfile"
    local i
    for ((i = 0; i < k; i++)); do
        local ns="${prefix}h$i"
        ip netns add "$ns" || return 1
        ip -n "$ns" link set lo up || return 1
        ip -n "${prefix}sw" link add "h$i" type veth peer name eth0 netns "$ns" || return 1
        ip -n "${prefix}sw" link set "h$i" master br0 up || return 1
        ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0 || return 1
        ip -n "$ns" link set eth0 up || return 1
        local private=""
        [ "$i" -gt 0 ] && private="$*"
        # A sleeper holds the host's namespaces; "enter" joins them through its pid. Code that
        # lives under /tmp (a CI clone, its virtualenv) is bound aside before /tmp is replaced
        # and moved back after, so every host still sees the same code.
        CF_KEEP="$(shared_code_under_tmp)" CF_STAGE="$state/keep$i" \
        ip netns exec "$ns" unshare --mount --uts --propagation private \
            sh -ec '
                hostname "$1"; shift
                n=0
                for dir in $CF_KEEP; do
                    mkdir -p "$CF_STAGE/$n"; mount --bind "$dir" "$CF_STAGE/$n"; n=$((n + 1))
                done
                mount -t tmpfs -o size=512m tmpfs /tmp
                n=0
                for dir in $CF_KEEP; do
                    mkdir -p "$dir"; mount --move "$CF_STAGE/$n" "$dir"; n=$((n + 1))
                done
                mount -t tmpfs -o size=256m tmpfs /dev/shm
                mount --bind "$1" /etc/hosts; shift
                ready="$1"; shift
                for dir in "$@"; do mkdir -p "$dir"; mount -t tmpfs -o size=256m tmpfs "$dir"; done
                echo $$ > "$ready.tmp"; mv "$ready.tmp" "$ready"
                exec sleep infinity
            ' sh "cfhost$i" "$state/hosts" "$state/h$i.pid" $private </dev/null >/dev/null 2>&1 &
        disown $!
        local waited=0
        while [ ! -s "$state/h$i.pid" ]; do
            sleep 0.1; waited=$((waited + 1))
            [ $waited -lt 100 ] || { echo "netns-hosts: host $i did not come up" >&2; return 1; }
        done
        echo "cfhost$i" >> "$state/hostfile"
    done
}

down() {
    [ -n "$state" ] || return 0
    local ns pid k i names=("${prefix}sw")
    k="$(cat "$state/count" 2>/dev/null || echo 16)"
    for ((i = 0; i < k; i++)); do names+=("${prefix}h$i"); done
    for ns in "${names[@]}"; do
        ip netns list 2>/dev/null | grep -q "^$ns\b" || continue
        # Only processes inside namespaces this script made.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$state"
    state=""
}

enter() {
    # enter HOST CMD...: HOST is cfhost<i>, its address, or <i>.
    local host="$1"; shift
    local st="${CONFORMANCE_NETNS_STATE:-}"
    [ -n "$st" ] && [ -d "$st" ] || die "enter: CONFORMANCE_NETNS_STATE names no running host set"
    local i="${host#cfhost}"
    [ "$host" != "${host#"$SUBNET".}" ] && i=$(( ${host##*.} - 1 ))
    [[ "$i" =~ ^[0-9]+$ ]] && [ -s "$st/h$i.pid" ] || die "enter: unknown host $host"
    exec nsenter --target "$(cat "$st/h$i.pid")" --net --mount --uts --wd="$PWD" -- "$@"
}

host_env() {
    # The environment a job across the hosts needs: where the hosts are, how Hydra reaches them,
    # and MPI on TCP only.
    export CONFORMANCE_NETNS_STATE="$state"
    export CONFORMANCE_HOSTFILE="$state/hostfile"
    export HYDRA_LAUNCHER=rsh
    export HYDRA_LAUNCHER_EXEC="$here/netns-enter.sh"
    export MPIR_CVAR_CH4_NETMOD=ofi
    export FI_PROVIDER=tcp
    export FI_TCP_IFACE=eth0
    export MPIR_CVAR_NOLOCAL=1
    export MPIR_CVAR_CH4_SHM_POSIX_EAGER=""
    export OMPI_MCA_btl=tcp,self
    export OMPI_MCA_plm_rsh_agent="$here/netns-enter.sh"
}

with_hosts() {
    local k="$1"; shift
    local private=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        case "$1" in
            --private) private+=("$(realpath -m "$2")"); shift 2 ;;
            *) die "with: unknown argument $1" ;;
        esac
    done
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "with: no command given"
    local reason; reason="$(why_not)"
    if [ -n "$reason" ]; then
        echo "netns-hosts: SKIPPED: cannot make namespace hosts here: $reason"
        return $SKIPPED
    fi
    trap 'down' EXIT
    trap 'down; exit 130' INT TERM
    up "$k" "${private[@]}" || { echo "netns-hosts: could not make $k hosts" >&2; return 2; }
    host_env
    echo "netns-hosts: $k hosts up ($(tr '\n' ' ' < "$state/hostfile")), state $state"
    local status=0
    # Host 0 is the runner's host: the command and mpiexec run there.
    ( cd "$root" && enter cfhost0 "$@" ) || status=$?
    down
    trap - EXIT INT TERM
    return $status
}

case "${1:-}" in
    with) shift; [ $# -ge 1 ] || die "with: K missing"; with_hosts "$@"; exit $? ;;
    enter) shift; [ $# -ge 2 ] || die "enter: HOST CMD... missing"; enter "$@" ;;
    check) shift; exec bash "$here/multihost-check.sh" "$@" ;;
    -h|--help|"") usage; exit 0 ;;
    *) die "unknown command $1 (see --help)" ;;
esac
