#!/usr/bin/env bash
# DHCP: perfdhcp (Kea, Debian package kea-admin) against the rig's DHCP and
# against dnsmasq, same pool size, in network namespaces joined by a veth
# pair: DORA exchanges per second and drops, at increasing offered rates.
# Goal: rig ≥ 1.0× dnsmasq. Needs root (namespaces).
# Usage: bench/dhcp.sh   (RATES="100 500 1000 2000" SECONDS_PER_RATE=5 CLIENTS=5000)
source "$(dirname "$0")/lib.sh"

RATES=${RATES:-100 500 1000 2000}
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
ip -n "$NS_C" addr add 198.18.140.2/16 dev prbdc0   # perfdhcp needs an address on its interface
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
RIG_PREFIX=(ip netns exec "$NS_S")
start_rig "$lab"
run_rates RIG
stop_pid "$RIG_PID"
sleep 1

ip netns exec "$NS_S" dnsmasq --keep-in-foreground --port=0 --interface=prbds0 --bind-interfaces \
    --dhcp-range="$POOL_START,$POOL_END,1h" --dhcp-authoritative --no-ping \
    --dhcp-leasefile="$WORK/dnsmasq.leases" --log-facility="$WORK/dnsmasq.log" --pid-file= &
REF_PID=$!
PIDS+=("$REF_PID")
sleep 1
run_rates REF
stop_pid "$REF_PID"

echo "DHCP: perfdhcp -r RATE -R $CLIENTS -p $SECONDS_PER_RATE over a veth between two namespaces; pool $POOL_START–$POOL_END; rig serve vs dnsmasq $(dnsmasq --version | awk 'NR == 1 { print $3 }') — $(machine)"
header "offered rate (DORA/s)" dnsmasq
for rate in $RATES; do
    read -r r_rate r_d1 r_d2 r_sent <<<"${RIG[$rate]}"
    read -r d_rate d_d1 d_d2 d_sent <<<"${REF[$rate]}"
    row "$rate/s: 4-way exchanges/s" "$r_rate" "$d_rate" "DORA/s"
    printf '|   drops DISCOVER-OFFER / REQUEST-ACK: rig %s / %s of %s, dnsmasq %s / %s of %s\n' \
        "$r_d1" "$r_d2" "$r_sent" "$d_d1" "$d_d2" "$d_sent"
done
