#!/usr/bin/env bash
# TFTP: the same client fetching a 32 MB file from the rig and from tftpd-hpa:
# plain (blksize 512), blksize 1428, and blksize 1428 + windowsize 16 (RFC 7440,
# atftp 0.8 is the Debian client that asks for it; tftpd-hpa does not grant it,
# so that row compares against tftpd-hpa at blksize 1428 without a window).
# Goals: ≥ 1.0× tftpd-hpa with the same options; ≥ 3× with windowsize.
# Usage: bench/tftp.sh   (REPEAT=3 SIZE_MB=32)
source "$(dirname "$0")/lib.sh"

REPEAT=${REPEAT:-3}
SIZE_MB=${SIZE_MB:-32}
RIG_IP=127.142.0.1
REF_IP=127.142.0.2
PORT=16969

need_packages curl:curl in.tftpd:tftpd-hpa atftp:atftp
build_rig

mkdir -p "$WORK/files"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom >"$WORK/files/fw.rom"

cat >"$WORK/serve.toml" <<TOML
name = "bench tftp"
source = "bench"
phones = "all"
[serve.files]
root = "$WORK/files"
[serve.tftp]
windowsize = 16
[[step]]
wait = "1s"
TOML

# median of the given numbers
median() { tr ' ' '\n' <<<"$*" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# fetch_curl IP BLKSIZE → seconds (median of REPEAT), checks the bytes
fetch_curl() {
    local times=() i t
    for i in $(seq "$REPEAT"); do
        rm -f "$WORK/out"
        local opt=()
        [ "$2" != 512 ] && opt=(--tftp-blksize "$2")
        t=$(curl -s --max-time 120 "${opt[@]}" -o "$WORK/out" -w '%{time_total}' "tftp://$1:$PORT/fw.rom")
        cmp -s "$WORK/out" "$WORK/files/fw.rom" || { say "TFTP $1 blksize $2: file differs"; t=999; }
        times+=("$t")
    done
    median "${times[@]}"
}

# fetch_atftp IP OPTIONS… → seconds (median of REPEAT)
fetch_atftp() {
    local ip=$1 times=() i s e
    shift
    for i in $(seq "$REPEAT"); do
        rm -f "$WORK/out"
        s=$(date +%s.%N)
        timeout 120 atftp "$@" --get -r fw.rom -l "$WORK/out" "$ip" "$PORT" >/dev/null 2>&1 || true
        e=$(date +%s.%N)
        if cmp -s "$WORK/out" "$WORK/files/fw.rom"; then
            times+=("$(awk -v s="$s" -v e="$e" 'BEGIN { print e - s }')")
        else
            say "atftp $ip $*: file differs"; times+=(999)
        fi
    done
    median "${times[@]}"
}

mbps() { awk -v t="$1" -v m="$SIZE_MB" 'BEGIN { if (t > 0) printf "%.1f", m * 1.048576 / t; else print 0 }'; }

lab=$(lab_file "$RIG_IP" "ports = { tftp = $PORT, http = 18081, https = 18444, ftp = 12122, dhcp = 16768, dhcp_client = 16869, sip = 15061 }")
start_rig "$lab" "$WORK/serve.toml"
wait_port "$RIG_IP" "$PORT" udp
rig_512=$(fetch_curl "$RIG_IP" 512)
rig_1428=$(fetch_curl "$RIG_IP" 1428)
rig_win=$(fetch_atftp "$RIG_IP" --option "blksize 1428" --option "windowsize 16")
rig_atftp=$(fetch_atftp "$RIG_IP" --option "blksize 1428")
stop_pid "$RIG_PID"

in.tftpd -L -a "$REF_IP:$PORT" -s -u root "$WORK/files" &
REF_PID=$!
PIDS+=("$REF_PID")
wait_port "$REF_IP" "$PORT" udp
ref_512=$(fetch_curl "$REF_IP" 512)
ref_1428=$(fetch_curl "$REF_IP" 1428)
ref_atftp=$(fetch_atftp "$REF_IP" --option "blksize 1428")
stop_pid "$REF_PID"

echo "TFTP: ${SIZE_MB} MB file, median of $REPEAT fetches, rig serve vs tftpd-hpa $(dpkg-query -W -f='${Version}' tftpd-hpa) — $(machine)"
header "client, options (MB/s)" tftpd-hpa
row "curl, blksize 512" "$(mbps "$rig_512")" "$(mbps "$ref_512")" MB/s
row "curl, blksize 1428" "$(mbps "$rig_1428")" "$(mbps "$ref_1428")" MB/s
row "atftp, blksize 1428" "$(mbps "$rig_atftp")" "$(mbps "$ref_atftp")" MB/s
row "atftp, blksize 1428 + windowsize 16 (ref: no window)" "$(mbps "$rig_win")" "$(mbps "$ref_atftp")" MB/s
