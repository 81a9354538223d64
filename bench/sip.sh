#!/usr/bin/env bash
# SIP: SIPp REGISTER with digest authentication at increasing rates against
# the rig's registrar and against kamailio (Debian, auth_db + a db_text user
# table, usrloc in memory); the highest rate with < 0.1 % failed or unfinished
# registrations. Each rate runs SECONDS_PER_RATE seconds (bounded: -m rate ×
# seconds, and a timeout).
#
# One lab user registers from many Call-IDs (every SIPp call is a fresh
# REGISTER → 401 → REGISTER with credentials → 200): SIPp 3.6.1 cannot take
# per-call credentials from an injection file (`[authentication
# username=[field0] …]` is not recognised as a keyword, the text goes out
# as a header line), so the credentials are SIPp's -au/-ap. Both registrars
# do the same work per registration (challenge, digest check, binding
# replaced), whichever user it is.
# Usage: bench/sip.sh   (RATES="100 200 400 800 1600 3200" SECONDS_PER_RATE=5
#                       RIG_IP=127.176.0.1 REF_IP=127.176.0.2 CLIENT_IP=127.176.0.3)
source "$(dirname "$0")/lib.sh"

RATES=${RATES:-100 200 400 800 1600 3200}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-4}
# Addresses can be moved (RIG_IP=… REF_IP=… CLIENT_IP=…) when several benches share a machine.
RIG_IP=${RIG_IP:-127.176.0.1}
REF_IP=${REF_IP:-127.176.0.2}
CLIENT_IP=${CLIENT_IP:-127.176.0.3}
PORT=15063
EXT=4999 # the lab phone of lib.sh's lab_file
PASSWORD=bench

need_packages sipp:sip-tester kamailio:kamailio
build_rig

# run_sipp IP RATE → "registered failed": one SIPp run of RATE × SECONDS_PER_RATE registrations.
run_sipp() {
    local ip=$1 rate=$2 calls=$(($2 * SECONDS_PER_RATE))
    rm -f "$WORK/stat.csv"
    timeout $((SECONDS_PER_RATE * 4 + 30)) sipp "$ip:$PORT" -sf "$BENCH_DIR/sip-register.xml" \
        -s "$EXT" -au "$EXT" -ap "$PASSWORD" -i "$CLIENT_IP" -p $((PORT + 10)) \
        -r "$rate" -m "$calls" -l $((rate * 2)) -recv_timeout 8000 \
        -nostdin -trace_stat -stf "$WORK/stat.csv" -fd 1 >/dev/null 2>&1 </dev/null || true
    awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } }
        NR > 1 { ok = $s; failed = $f }
        END { print ok + 0, failed + 0 }' "$WORK/stat.csv" 2>/dev/null || echo "0 $calls"
}

# sweep NAME IP — every rate in turn; fills OK_NAME_rate / BAD_NAME_rate and BEST[NAME].
declare -A OK BAD BEST
sweep() {
    local name=$1 ip=$2 rate ok failed calls
    BEST[$name]=0
    for rate in $RATES; do
        calls=$((rate * SECONDS_PER_RATE))
        read -r ok failed < <(run_sipp "$ip" "$rate")
        OK[$name.$rate]=$ok
        BAD[$name.$rate]=$((calls - ok)) # failed, or never finished
        say "$name at $rate/s: $ok of $calls registered, $failed failed"
        if awk -v f=$((calls - ok)) -v n="$calls" 'BEGIN { exit !(f / n < 0.001) }'; then
            BEST[$name]=$rate
        fi
    done
}

lab=$(lab_file "$RIG_IP" "ports = { sip = $PORT, http = 18083, https = 18446, tftp = 16971, ftp = 12124, dhcp = 16770, dhcp_client = 16871 }")
start_rig "$lab"
wait_port "$RIG_IP" "$PORT" udp
sweep rig "$RIG_IP"
stop_pid "$RIG_PID"
events=$(find "$WORK/runs" -name events.jsonl | head -1)
rig_results=$(grep -o '"kind":"sip.register".*"result":"[a-z]*"' "$events" | grep -o '"result":"[a-z]*"' |
    sort | uniq -c | awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }')
rig_malformed=$(grep -c '"kind":"sip.malformed"' "$events" || true)

# kamailio: the same user in a db_text subscriber table (password in clear, HA1
# computed), qop=auth like the rig, bindings in memory (usrloc db_mode 0).
mkdir -p "$WORK/kamailio/db" "$WORK/kamailio/run"
printf 'table_name(str) table_version(int)\nsubscriber:7\nlocation:9\n' >"$WORK/kamailio/db/version"
printf 'id(int,auto) username(str) domain(str) password(str) ha1(str,null) ha1b(str,null)\n1:%s:%s:%s:::\n' \
    "$EXT" "$REF_IP" "$PASSWORD" >"$WORK/kamailio/db/subscriber"
cat >"$WORK/kamailio/kamailio.cfg" <<CFG
#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=$KAMAILIO_CHILDREN
listen=udp:$REF_IP:$PORT
disable_tcp=yes
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "db_text.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
modparam("usrloc", "db_mode", 0)
modparam("auth", "qop", "auth")
modparam("auth_db", "db_url", "text://$WORK/kamailio/db")
modparam("auth_db", "calculate_ha1", yes)
modparam("auth_db", "password_column", "password")
modparam("auth_db", "load_credentials", "")
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (!is_method("REGISTER")) { sl_send_reply("405", "Method Not Allowed"); exit; }
    if (!auth_check("\$fd", "subscriber", "1")) { auth_challenge("\$fd", "1"); exit; }
    consume_credentials();
    if (!save("location")) { sl_reply_error(); }
    exit;
}
CFG
# -DD: stays in the foreground (its children die with it), so the cleanup's kill ends it.
kamailio -f "$WORK/kamailio/kamailio.cfg" -DD -E -Y "$WORK/kamailio/run" >"$WORK/kamailio.log" 2>&1 &
REF_PID=$!
PIDS+=("$REF_PID")
wait_port "$REF_IP" "$PORT" udp
sweep kamailio "$REF_IP"
stop_pid "$REF_PID"

echo "SIP: SIPp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1) REGISTER + 401 + REGISTER with digest + 200 over UDP, ${SECONDS_PER_RATE} s per rate;" \
    "rig serve vs kamailio $(dpkg-query -W -f='${Version}' kamailio) ($KAMAILIO_CHILDREN UDP workers) — $(machine), load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-10s | %14s | %14s | %16s | %16s |\n' "rate /s" "rig registered" "rig not" "kamailio regist." "kamailio not"
printf '|%s|%s|%s|%s|%s|\n' ------------ ---------------- ---------------- ------------------ ------------------
for rate in $RATES; do
    printf '| %-10s | %14s | %14s | %16s | %16s |\n' "$rate" "${OK[rig.$rate]}" "${BAD[rig.$rate]}" \
        "${OK[kamailio.$rate]}" "${BAD[kamailio.$rate]}"
done
echo "highest rate with < 0.1 % failed or unfinished: rig ${BEST[rig]}/s, kamailio ${BEST[kamailio]}/s, ratio $(ratio "${BEST[rig]}" "${BEST[kamailio]}")×"
echo "rig sip.register results: $rig_results; sip.malformed: $rig_malformed"
