#!/bin/sh
# Runs every fuzz target for a bounded time (default 60 s each) and fails on
# the first crash. The toolchain here is stable Rust, so cargo-fuzz's nightly
# flags (-Zsanitizer=address, coverage passes) are unlocked with
# RUSTC_BOOTSTRAP=1 — no nightly download needed.
#
#   cargo install cargo-fuzz --locked      # once
#   fuzz/run.sh                            # every target, 60 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh sip_message
#
# A crash leaves its input in fuzz/artifacts/<target>/crash-*; turn it into a
# regression test beside the parser's other tests (see README.md).
set -eu
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-60}"
export RUSTC_BOOTSTRAP=1
# Its own target folder: the fuzz build's flags differ from the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$(pwd)/target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
targets="$*"
if [ -z "$targets" ]; then
    targets=$(cargo fuzz list)
fi
for target in $targets; do
    mkdir -p "corpus/$target"
    # Seed corpora from the repository's own test data, where it has some.
    case "$target" in
        sip_message) cp ../rig/sip/tests/torture/*/*.dat "corpus/$target/" ;;
        scenario_file) find ../scenarios -name '*.toml' ! -path '*/labs/*' -exec cp {} "corpus/$target/" \; ;;
        lab_file) cp ../scenarios/labs/*.toml "corpus/$target/" ;;
    esac
    echo "== $target: ${seconds}s"
    cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536
done
