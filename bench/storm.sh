#!/usr/bin/env bash
# Boot storm: `rig storm` with 1 000 and 10 000 virtual Htek UC924 phones.
# Targets on a 2-core machine: 1 000 phones registered ≤ 3 s, 10 000 ≤ 30 s, zero lost.
# Every virtual phone has a pseudo-terminal console: 10 000 phones need
# kernel.pty.max above 10 000 (Linux defaults to 4096); run as root and this
# script raises it. Usage: bench/storm.sh   (SIZES="1000 10000")
source "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-1000 10000}
build_rig

largest=$(tr ' ' '\n' <<<"$SIZES" | sort -n | tail -1)
pty_max=$(cat /proc/sys/kernel/pty/max)
if [ "$pty_max" -lt $((largest + 2048)) ]; then
    say "raising kernel.pty.max from $pty_max to $((largest + 4096)) (one pseudo-terminal per virtual phone)"
    echo $((largest + 4096)) >/proc/sys/kernel/pty/max
fi

octet=145
for n in $SIZES; do
    "$RIG" storm --phones "$n" --model htek-uc924 --octet "$octet" --runs "$WORK/runs" \
        --timeout "$((30 + n / 100))s" --json "$WORK/storm-$n.json" || true
    echo
    octet=$((octet + 1))
done
