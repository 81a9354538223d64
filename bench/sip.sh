#!/usr/bin/env bash
# SIP: SIPp REGISTER with digest authentication at increasing rates against
# the rig's registrar; the highest rate with < 0.1 % failed registrations.
# Each rate runs SECONDS_PER_RATE seconds (bounded: -m rate × seconds, and a timeout).
# Usage: bench/sip.sh   (RATES="100 200 400 800 1600" SECONDS_PER_RATE=5 USERS=1000)
source "$(dirname "$0")/lib.sh"

RATES=${RATES:-100 200 400 800 1600}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
USERS=${USERS:-1000}
RIG_IP=127.144.0.1
CLIENT_IP=127.144.0.2
PORT=15063

need_packages sipp:sip-tester
build_rig

# A lab of USERS phones (the registrar authenticates lab phones) and the SIPp injection file.
lab=$(lab_file "$RIG_IP" "ports = { sip = $PORT, http = 18083, https = 18446, tftp = 16971, ftp = 12124, dhcp = 16770, dhcp_client = 16871 }")
echo SEQUENTIAL >"$WORK/users.csv"
for i in $(seq "$USERS"); do
    printf '\n[[phone]]\nname = "u%05d"\nmodel = "htek-uc924"\nmac = "00:1f:c1:fd:%02x:%02x"\next = "%d"\npassword = "pw%d"\n' \
        "$i" $((i >> 8)) $((i & 255)) $((200000 + i)) "$i" >>"$lab"
    printf '%d;pw%d\n' $((200000 + i)) "$i" >>"$WORK/users.csv"
done
start_rig "$lab"
wait_port "$RIG_IP" "$PORT" udp

declare -A OK FAILED
best=0
for rate in $RATES; do
    calls=$((rate * SECONDS_PER_RATE))
    rm -f "$WORK"/stat.csv
    timeout $((SECONDS_PER_RATE * 4 + 30)) sipp "$RIG_IP:$PORT" -sf "$BENCH_DIR/sip-register.xml" \
        -inf "$WORK/users.csv" -i "$CLIENT_IP" -p 0 -r "$rate" -m "$calls" -l $((rate * 2)) \
        -recv_timeout 8000 -nostdin -trace_stat -stf "$WORK/stat.csv" -fd 1 >/dev/null 2>&1 </dev/null || true
    read -r ok failed < <(awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } }
        NR > 1 { ok = $s; failed = $f }
        END { print ok + 0, failed + 0 }' "$WORK/stat.csv" 2>/dev/null || echo "0 $calls")
    OK[$rate]=$ok
    FAILED[$rate]=$failed
    lost=$((calls - ok - failed))
    if [ "$ok" -gt 0 ] && awk -v f=$((failed + lost)) -v n="$calls" 'BEGIN { exit !(f / n < 0.001) }'; then
        best=$rate
    fi
done
stop_pid "$RIG_PID"

echo "SIP: SIPp REGISTER + 401 + REGISTER with digest + 200, $USERS users, ${SECONDS_PER_RATE} s per rate — $(machine)"
printf '| %-10s | %10s | %10s | %10s |\n' "rate /s" registered failed "not done"
for rate in $RATES; do
    printf '| %-10s | %10s | %10s | %10s |\n' "$rate" "${OK[$rate]}" "${FAILED[$rate]}" $((rate * SECONDS_PER_RATE - OK[$rate] - FAILED[$rate]))
done
echo "highest rate with < 0.1 % failures: $best REGISTER transactions/s (reference registrar: not run, see bench/README.md)"
