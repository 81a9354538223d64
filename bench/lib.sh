# Shared helpers of the bench/ scripts (sourced, not run).
#
# Every comparison runs the rig and the reference daemon one after the other
# on this machine, in the same run, with the same client and options, and
# prints both figures and their ratio. Servers bind only to 127.<octet>.x.y
# addresses (or to veths inside namespaces the script creates), never to a
# real interface. Every load loop is bounded in count and time.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
RIG=${RIG:-$CARGO_TARGET_DIR/release/rig}
WORK=$(mktemp -d /tmp/phonerig-bench.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if declare -F bench_cleanup >/dev/null; then bench_cleanup || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '%s\n' "$*" >&2; }

# need_packages PROGRAM:PACKAGE … — installs the Debian packages whose program is missing.
need_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]} (Debian)"
        # policy-rc.d keeps the daemons from starting on every interface at install time.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            REMOVE_POLICY=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if [ "${REMOVE_POLICY:-}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
}

build_rig() {
    if [ -z "${NO_BUILD:-}" ]; then
        say "building rig (release)"
        (cd "$REPO" && cargo build --release --bin rig -q)
    fi
    [ -x "$RIG" ] || { say "no rig binary at $RIG"; exit 2; }
}

# lab_file IP [extra [bench] lines] — a lab with one (absent) phone: `rig serve` needs one.
lab_file() {
    local ip=$1 extra=${2:-}
    local o2 o3
    o2=$(cut -d. -f2 <<<"$ip")
    o3=$(cut -d. -f3 <<<"$ip")
    cat >"$WORK/lab.toml" <<LAB
name = "bench"
[bench]
nic = "${NIC:-lo}"
ip = "$ip"
prefix = ${PREFIX:-16}
pool = { start = "${POOL_START:-127.$o2.$((o3 + 1)).1}", end = "${POOL_END:-127.$o2.$((o3 + 200)).250}" }
lease_time = "1h"
$extra

[[phone]]
name = "bench-phone"
model = "htek-uc924"
mac = "00:1f:c1:fe:00:01"
ext = "4999"
password = "bench"
LAB
    echo "$WORK/lab.toml"
}

# start_rig LAB [SCENARIO] — `rig serve` in the background (its events go to its run
# folder, its printed events to $WORK/rig.out). RIG_PREFIX=(ip netns exec NS) runs it elsewhere.
RIG_PREFIX=()
start_rig() {
    local lab=$1 scenario=${2:-}
    local args=(serve --lab "$lab" --runs "$WORK/runs")
    [ -n "$scenario" ] && args+=(--scenario "$scenario")
    "${RIG_PREFIX[@]}" "$RIG" "${args[@]}" >"$WORK/rig.out" 2>"$WORK/rig.err" &
    RIG_PID=$!
    PIDS+=("$RIG_PID")
    local i
    for i in $(seq 150); do
        if grep -q "serving;" "$WORK/rig.err" 2>/dev/null; then return 0; fi
        if ! kill -0 "$RIG_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    say "rig serve did not start:"; cat "$WORK/rig.err" >&2; exit 1
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_port IP PORT [tcp|udp] — waits (≤ 5 s) until something listens there.
wait_port() {
    local i flag=-t
    [ "${3:-tcp}" = udp ] && flag=-u
    for i in $(seq 50); do
        if ss -H -l -n $flag "src $1:$2" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    say "nothing listens on $1:$2"; return 1
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# row NAME RIG REFERENCE UNIT — one line of a comparison table; the ratio is rig / reference.
row() {
    printf '| %-44s | %12s | %12s | %6s× | %s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" "$4"
}

header() {
    printf '| %-44s | %12s | %12s | %7s | %s\n' "$1" rig "$2" ratio unit
    printf '|%s|%s|%s|%s|%s\n' "$(printf -- '-%.0s' $(seq 46))" "--------------" "--------------" "---------" "-----"
}

machine() {
    printf '%s CPUs (%s), %s GiB, %s\n' "$(nproc)" \
        "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
        "$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
}
