#!/usr/bin/env bash
# HTTP: wrk against the rig's HTTP service and against nginx, same files, same
# client, one after the other: a small config file and a 32 MB firmware file.
# Goal: rig ≥ 0.8× nginx. Usage: bench/http.sh   (DURATION=5 CONNECTIONS=32)
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
RIG_IP=127.141.0.1
REF_IP=127.141.0.2
PORT=8080

need_packages wrk:wrk nginx:nginx-light
build_rig

mkdir -p "$WORK/files"
# A realistic Htek config (≈ 1 KB) and a 32 MB firmware image.
{
    echo '<?xml version="1.0" encoding="UTF-8" ?>'
    echo '<hl_provision version="1"><config version="1">'
    for i in $(seq 1 24); do echo "<P$((3000 + i)) para=\"Setting_$i\">value-$i-abcdefgh</P$((3000 + i))>"; done
    echo '</config></hl_provision>'
} >"$WORK/files/cfg001fc1fe0001.xml"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$WORK/files/fw924.rom"

cat >"$WORK/serve.toml" <<TOML
name = "bench http"
source = "bench"
phones = "all"
[serve.files]
root = "$WORK/files"
[[step]]
wait = "1s"
TOML

cat >"$WORK/nginx.conf" <<NGINX
user root;
worker_processes $(nproc);
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log $WORK/nginx-access.log;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen $REF_IP:$PORT;
        root $WORK/files;
    }
}
NGINX

# wrk_run URL → "requests_per_s errors"
wrk_run() {
    local out
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s "$1")
    echo "$out" >>"$WORK/wrk.log"
    local rps errors non2xx
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    errors=$(awk -F'[ ,]+' '/Socket errors/ { print $4 + $6 + $8 + $10 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    echo "${rps:-0} $(( ${errors:-0} + ${non2xx:-0} ))"
}

lab=$(lab_file "$RIG_IP" "ports = { http = $PORT, https = 18443, tftp = 16969, ftp = 12121, dhcp = 16767, dhcp_client = 16868, sip = 15060 }")
start_rig "$lab" "$WORK/serve.toml"
wait_port "$RIG_IP" "$PORT"
read -r rig_small rig_small_err < <(wrk_run "http://$RIG_IP:$PORT/cfg001fc1fe0001.xml")
read -r rig_fw rig_fw_err < <(wrk_run "http://$RIG_IP:$PORT/fw924.rom")
stop_pid "$RIG_PID"

nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$REF_IP" "$PORT"
read -r ref_small ref_small_err < <(wrk_run "http://$REF_IP:$PORT/cfg001fc1fe0001.xml")
read -r ref_fw ref_fw_err < <(wrk_run "http://$REF_IP:$PORT/fw924.rom")
stop_pid "$NGINX_PID"

echo "HTTP: wrk -t1 -c$CONNECTIONS -d${DURATION}s, rig serve vs nginx $(nginx -v 2>&1 | sed 's/.*\///') — $(machine)"
header "wrk" nginx
row "small config (1 KB) requests/s" "$rig_small" "$ref_small" "req/s"
row "32 MB firmware MB/s" "$(awk -v r="$rig_fw" 'BEGIN { printf "%.1f", r * 32 }')" \
    "$(awk -v r="$ref_fw" 'BEGIN { printf "%.1f", r * 32 }')" "MB/s"
echo "errors (socket + non-2xx): rig $rig_small_err / $rig_fw_err, nginx $ref_small_err / $ref_fw_err"
