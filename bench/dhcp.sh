#!/usr/bin/env bash
# DHCP: perfdhcp (Kea, Debian package kea-admin) against the rig's DHCP and
# against dnsmasq, same pool size, in network namespaces joined by a veth
# pair: DORA exchanges per second and drops, at increasing offered rates.
# Goal: rig ≥ 1.0× dnsmasq. Needs root (namespaces).
# Usage: bench/dhcp.sh   (RATES="500 1000 2000 4000" SECONDS_PER_RATE=5 CLIENTS=5000)
source "$(dirname "$0")/lib.sh"

RATES=${RATES:-500 1000 2000 4000}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
CLIENTS=${CLIENTS:-5000}
NS_S=prbench-dhcp-s
NS_C=prbench-dhcp-c
SERVER_IP=198.18.140.1
POOL_START=198.18.141.1
POOL_END=198.18.180.254   # 10 240 addresses for both servers

need_packages perfdhcp:kea-admin dnsmasq:dnsmasq-base
build_rig

bench_cleanup() {
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
}
bench_cleanup
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add prbds0 netns "$NS_S" type veth peer name prbdc0 netns "$NS_C"
ip -n "$NS_S" addr add "$SERVER_IP/16" dev prbds0
ip -n "$NS_S" link set prbds0 up
ip -n "$NS_S" link set lo up
ip -n "$NS_C" link set prbdc0 up
ip -n "$NS_C" link set lo up

# perfdhcp_at RATE → "exchanges/s drops_discover drops_request sent"
perfdhcp_at() {
    local out
    out=$(ip netns exec "$NS_C" timeout $((SECONDS_PER_RATE + 20)) \
        perfdhcp -4 -l prbdc0 -r "$1" -R "$CLIENTS" -p "$SECONDS_PER_RATE" 2>&1 || true)
    echo "$out" >>"$WORK/perfdhcp.log"
    awk '
        /^Rate:/ { rate = $2 }
        /Statistics for: DISCOVER-OFFER/ { s = 1 }
        /Statistics for: REQUEST-ACK/ { s = 2 }
        /^sent packets:/ { if (s == 1) sent = $3 }
        /^drops:/ { d[s] = $2 }
        END { printf "%.0f %d %d %d\n", rate, d[1], d[2], sent }' <<<"$out"
}

declare -A RIG REF
run_rates() {
    local -n into=$1
    local rate
    for rate in $RATES; do into[$rate]=$(perfdhcp_at "$rate"); sleep 1; done
}

lab=$(NIC=prbds0 POOL_START=$POOL_START POOL_END=$POOL_END lab_file "$SERVER_IP" "dedicated = true")
start_rig "$lab" /dev/null ip netns exec "$NS_S" 2>/dev/null || true
