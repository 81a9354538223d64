#!/usr/bin/env bash
# Rig overhead: the latency between a request leaving the client and its event
# being stamped on the rig's timeline (and written to events.jsonl), p50/p99.
#
# Method. A small client (Python, below) sends COUNT SIP requests over UDP on
# loopback, RATE per second (paced, so this is the latency of one request, not
# of a queue), each with its own Call-ID, and notes the CLOCK_REALTIME of each
# send right before the sendto(). The rig stamps an event with `t_us`
# (microseconds on its monotonic clock since the run began) and `wall` =
# the wall clock read when the run began + t_us, so `wall` is the rig's
# CLOCK_MONOTONIC shifted by a constant (REALTIME − MONOTONIC at its start,
# two reads taken back to back). The client checks that REALTIME − MONOTONIC
# did not change between its first and last send (no clock step; a slew moves
# both clocks alike), so `wall` − send time is the latency on one clock.
# Events matched by Call-ID:
#   OPTIONS  → `sip.message` direction=in (received, parsed, stamped: the
#              first event of any SIP request);
#   REGISTER → `sip.register` result=challenged (registrar decided, 401 sent).
# Reference: the same client against a minimal receiver (Python, blocking
# recvfrom, stamps CLOCK_REALTIME on return), i.e. the floor of "a user-space
# process on this machine has the datagram". The ratio is rig ÷ that floor.
# Usage: bench/overhead.sh   (COUNT=2000 RATE=200)
source "$(dirname "$0")/lib.sh"

COUNT=${COUNT:-2000}
RATE=${RATE:-200}
RIG_IP=127.176.1.1
REF_IP=127.176.1.2
CLIENT_IP=127.176.1.3
PORT=15073

need_packages python3:python3
build_rig

cat >"$WORK/client.py" <<'PY'
"""Sends COUNT requests at RATE/s; prints one line per request: call-id, send CLOCK_REALTIME ns."""
import socket, sys, time
method, ip, port, client_ip, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((client_ip, 0))
sock.setblocking(False)
lport = sock.getsockname()[1]
R, M = time.CLOCK_REALTIME, time.CLOCK_MONOTONIC

def offset():
    """REALTIME − MONOTONIC, from the tightest of a few bracketing reads."""
    best = None
    for _ in range(20):
        m0 = time.clock_gettime_ns(M); r = time.clock_gettime_ns(R); m1 = time.clock_gettime_ns(M)
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1]

off_start = offset()
start = time.clock_gettime_ns(M)
out = []
for i in range(count):
    due = start + int(i * 1e9 / rate)
    while time.clock_gettime_ns(M) < due:
        time.sleep(max(0.0, (due - time.clock_gettime_ns(M)) / 1e9 - 0.0002))
    cid = f"ovh-{method}-{i}-{lport}"
    user = "4999"
    msg = (f"{method} sip:{user}@{ip}:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {client_ip}:{lport};branch=z9hG4bK{cid}\r\n"
           f"From: <sip:{user}@{ip}>;tag=t{i}\r\n"
           f"To: <sip:{user}@{ip}>\r\n"
           f"Call-ID: {cid}\r\n"
           f"CSeq: 1 {method}\r\n"
           f"Contact: <sip:{user}@{client_ip}:{lport};ovh={cid}>\r\n"
           "Max-Forwards: 70\r\nUser-Agent: phonerig-overhead\r\nContent-Length: 0\r\n\r\n").encode()
    t = time.clock_gettime_ns(R)
    sock.sendto(msg, (ip, port))
    out.append(f"{cid} {t}")
    try:  # drain answers so the socket buffer never fills
        while True:
            sock.recv(65535)
    except BlockingIOError:
        pass
off_end = offset()
print(f"# clock-offset-drift-ns {off_end - off_start}")
print("\n".join(out))
PY

cat >"$WORK/receiver.py" <<'PY'
"""The reference: receives until IDLE seconds pass with nothing; prints call-id, receive CLOCK_REALTIME ns."""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", file=sys.stderr, flush=True)
out = []
sock.settimeout(30)  # the first request
while True:
    try:
        data = sock.recv(65535)
    except socket.timeout:
        break
    t = time.clock_gettime_ns(time.CLOCK_REALTIME)
    sock.settimeout(2)
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"call-id:"):
            out.append(f"{line[8:].strip().decode()} {t}")
print("\n".join(out))
PY

cat >"$WORK/latency.py" <<'PY'
"""latency.py SENT EVENTS-or-RECEIVED KIND → "p50 p99 max matched" in µs.
KIND: message (sip.message in), register (sip.register challenged), received (reference lines)."""
import json, sys
from datetime import datetime, timezone

def wall_ns(text):
    """RFC 3339 with up to 9 fraction digits → ns since the epoch (datetime keeps only µs)."""
    main, _, rest = text.partition(".")
    frac = ""
    for ch in rest:
        if not ch.isdigit():
            break
        frac += ch
    tz = rest[len(frac):] if rest else main[19:]
    base = datetime.fromisoformat(main[:19] + (tz.replace("Z", "+00:00") or "+00:00"))
    return int(base.timestamp()) * 10**9 + int((frac + "000000000")[:9])

sent, drift = {}, None
for line in open(sys.argv[1]):
    if line.startswith("# clock-offset-drift-ns"):
        drift = int(line.split()[-1])
    elif line.strip():
        cid, t = line.split()
        sent[cid] = int(t)
seen = {}
kind = sys.argv[3]
for line in open(sys.argv[2]):
    if kind == "received":
        if line.strip():
            cid, t = line.split()
            seen.setdefault(cid, int(t))
        continue
    ev = json.loads(line)
    f = ev.get("fields", ev)
    if kind == "message" and ev.get("kind") == "sip.message" and f.get("direction") == "in":
        seen.setdefault(f.get("call_id"), wall_ns(ev["wall"]))
    if kind == "register" and ev.get("kind") == "sip.register" and f.get("result") == "challenged":
        # sip.register carries no Call-ID; the client put it in the Contact (;ovh=<call-id>).
        contact = f.get("contact") or ""
        if ";ovh=" in contact:
            seen.setdefault(contact.split(";ovh=")[1].rstrip(">"), wall_ns(ev["wall"]))
lat = sorted((seen[c] - sent[c]) / 1000 for c in sent if c in seen)
if abs(drift or 0) > 100_000:
    sys.exit(f"the client's REALTIME − MONOTONIC moved by {drift} ns during the run (clock step): not measured")
if not lat:
    print("n/a n/a n/a 0")
else:
    pick = lambda q: lat[min(len(lat) - 1, max(0, int(round(q * len(lat))) - 1))]
    print(f"{pick(0.5):.0f} {pick(0.99):.0f} {lat[-1]:.0f} {len(lat)}")
PY

lab=$(lab_file "$RIG_IP" "ports = { sip = $PORT, http = 18084, https = 18447, tftp = 16972, ftp = 12125, dhcp = 16771, dhcp_client = 16872 }")
start_rig "$lab"
wait_port "$RIG_IP" "$PORT" udp
python3 "$WORK/client.py" OPTIONS "$RIG_IP" "$PORT" "$CLIENT_IP" "$COUNT" "$RATE" >"$WORK/sent.options"
python3 "$WORK/client.py" REGISTER "$RIG_IP" "$PORT" "$CLIENT_IP" "$COUNT" "$RATE" >"$WORK/sent.register"
sleep 1 # the last events
stop_pid "$RIG_PID"
events=$(find "$WORK/runs" -name events.jsonl | head -1)
read -r opt_50 opt_99 opt_max opt_n < <(python3 "$WORK/latency.py" "$WORK/sent.options" "$events" message)
read -r reg_50 reg_99 reg_max reg_n < <(python3 "$WORK/latency.py" "$WORK/sent.register" "$events" register)

ref_run() { # ref_run METHOD → the reference receiver's lines
    python3 "$WORK/receiver.py" "$REF_IP" "$PORT" >"$WORK/received.$1" 2>"$WORK/receiver.err" &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$REF_IP" "$PORT" udp
    python3 "$WORK/client.py" "$1" "$REF_IP" "$PORT" "$CLIENT_IP" "$COUNT" "$RATE" >"$WORK/sent.ref.$1"
    wait "$pid" || true
}
ref_run OPTIONS
read -r ref_50 ref_99 ref_max ref_n < <(python3 "$WORK/latency.py" "$WORK/sent.ref.OPTIONS" "$WORK/received.OPTIONS" received)

echo "Rig overhead: client send → event stamped on the timeline, $COUNT requests at $RATE/s over UDP on loopback — $(machine), load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-52s | %8s | %8s | %8s | %9s |\n' "request → event" "p50 µs" "p99 µs" "max µs" matched
printf '|%s|%s|%s|%s|%s|\n' "------------------------------------------------------" ---------- ---------- ---------- -----------
printf '| %-52s | %8s | %8s | %8s | %9s |\n' "reference: python recvfrom returns" "$ref_50" "$ref_99" "$ref_max" "$ref_n/$COUNT"
printf '| %-52s | %8s | %8s | %8s | %9s |\n' "rig: OPTIONS → sip.message (in)" "$opt_50" "$opt_99" "$opt_max" "$opt_n/$COUNT"
printf '| %-52s | %8s | %8s | %8s | %9s |\n' "rig: REGISTER → sip.register challenged (401 sent)" "$reg_50" "$reg_99" "$reg_max" "$reg_n/$COUNT"
echo "ratio rig ÷ reference, OPTIONS: p50 $(ratio "$opt_50" "$ref_50")×, p99 $(ratio "$opt_99" "$ref_99")×"
