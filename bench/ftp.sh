#!/usr/bin/env bash
# FTP: repeated curl RETR of a config file, rig vs vsftpd (anonymous, passive).
# One curl process fetches the file COUNT times over one control connection
# (each RETR opens its own passive data connection), then PARALLEL such
# clients at once. Usage: bench/ftp.sh   (COUNT=500 PARALLEL=8)
source "$(dirname "$0")/lib.sh"

COUNT=${COUNT:-500}
PARALLEL=${PARALLEL:-8}
RIG_IP=127.175.0.1
REF_IP=127.175.0.2
PORT=12123

need_packages curl:curl vsftpd:vsftpd
build_rig

mkdir -p "$WORK/files" "$WORK/empty"
{
    echo '<?xml version="1.0" encoding="UTF-8" ?>'
    echo '<hl_provision version="1"><config version="1">'
    for i in $(seq 1 24); do echo "<P$((3000 + i)) para=\"Setting_$i\">value-$i-abcdefgh</P$((3000 + i))>"; done
    echo '</config></hl_provision>'
} >"$WORK/files/cfg001fc1fe0001.xml"
chmod -R a+rX "$WORK"

cat >"$WORK/serve.toml" <<TOML
name = "bench ftp"
source = "bench"
phones = "all"
[serve.files]
root = "$WORK/files"
[[step]]
wait = "1s"
TOML

cat >"$WORK/vsftpd.conf" <<CONF
listen=YES
listen_address=$REF_IP
listen_port=$PORT
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$WORK/files
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_min_port=31100
pasv_max_port=31999
pasv_address=$REF_IP
secure_chroot_dir=$WORK/empty
# The anonymous user must have a home that exists: vsftpd changes into it
# before anon_root (with the user nobody, home /nonexistent, every login got
# "500 OOPS: cannot change directory"). Debian's vsftpd creates the user ftp (/srv/ftp).
ftp_username=ftp
xferlog_enable=YES
vsftpd_log_file=$WORK/vsftpd.log
max_clients=0
max_per_ip=0
seccomp_sandbox=NO
CONF

# clients IP → RETR/s: PARALLEL curl processes, each fetching COUNT times on one connection.
retr_rate() {
    local urls=() i s e ok
    for i in $(seq "$COUNT"); do urls+=("ftp://$1:$PORT/cfg001fc1fe0001.xml" -o /dev/null); done
    s=$(date +%s.%N)
    for i in $(seq "$2"); do
        # Line-buffered: a curl ended by the timeout still leaves the codes of what it fetched.
        timeout 120 stdbuf -oL curl -s --ftp-pasv "${urls[@]}" -w '%{http_code}\n' >"$WORK/codes.$i" &
    done
    wait
    e=$(date +%s.%N)
    ok=$(cat "$WORK"/codes.* | grep -c '^226$' || true)
    rm -f "$WORK"/codes.*
    awk -v n="$ok" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f %d\n", n / (e - s), n }'
}

# clients IP → RETR/s with Python's ftplib: the same COUNT RETRs per control
# connection, passive, without curl 7.88's stall (after reading the 229/227
# reply curl polls its own descriptor ≈0.2–1 s before connecting the data port,
# so curl rows measure curl more than the server; see bench/README.md).
ftplib_rate() {
    python3 - "$1" "$PORT" "$COUNT" "$2" <<'PY'
import ftplib, sys, threading, time
host, port, count, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
done = [0] * clients
def client(i):
    try:
        ftp = ftplib.FTP()
        ftp.connect(host, port, timeout=30)
        ftp.login()
        for _ in range(count):
            ftp.retrbinary("RETR cfg001fc1fe0001.xml", lambda b: None)
            done[i] += 1
        ftp.quit()
    except Exception as error:
        print(f"ftplib client {i}: {error}", file=sys.stderr)
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - start
print(f"{sum(done) / elapsed:.0f} {sum(done)}")
PY
}

lab=$(lab_file "$RIG_IP" "ports = { ftp = $PORT, ftp_passive = [30100, 30999], http = 18082, https = 18445, tftp = 16970, dhcp = 16769, dhcp_client = 16870, sip = 15062 }")
start_rig "$lab" "$WORK/serve.toml"
wait_port "$RIG_IP" "$PORT"
read -r rig_1 rig_1_ok < <(retr_rate "$RIG_IP" 1)
read -r rig_n rig_n_ok < <(retr_rate "$RIG_IP" "$PARALLEL")
read -r rig_p1 rig_p1_ok < <(ftplib_rate "$RIG_IP" 1)
read -r rig_pn rig_pn_ok < <(ftplib_rate "$RIG_IP" "$PARALLEL")
stop_pid "$RIG_PID"

vsftpd "$WORK/vsftpd.conf" &
REF_PID=$!
PIDS+=("$REF_PID")
wait_port "$REF_IP" "$PORT"
read -r ref_1 ref_1_ok < <(retr_rate "$REF_IP" 1)
read -r ref_n ref_n_ok < <(retr_rate "$REF_IP" "$PARALLEL")
read -r ref_p1 ref_p1_ok < <(ftplib_rate "$REF_IP" 1)
read -r ref_pn ref_pn_ok < <(ftplib_rate "$REF_IP" "$PARALLEL")
stop_pid "$REF_PID"

echo "FTP: curl RETR of a 1 KB file, $COUNT per client, rig serve vs vsftpd $(dpkg-query -W -f='${Version}' vsftpd) — $(machine)"
header "clients" vsftpd
row "1 client, $COUNT RETR on one connection" "$rig_1" "$ref_1" "RETR/s"
row "$PARALLEL clients at once" "$rig_n" "$ref_n" "RETR/s"
row "python ftplib: 1 client, $COUNT RETR" "$rig_p1" "$ref_p1" "RETR/s"
row "python ftplib: $PARALLEL clients at once" "$rig_pn" "$ref_pn" "RETR/s"
echo "complete transfers (226): curl rig $rig_1_ok + $rig_n_ok, vsftpd $ref_1_ok + $ref_n_ok; ftplib rig $rig_p1_ok + $rig_pn_ok, vsftpd $ref_p1_ok + $ref_pn_ok; of $((COUNT * (1 + PARALLEL))) each"
