#!/usr/bin/env bash
# Runs every devreg fuzz target for SECONDS seconds each (default 30) and
# fails on the first crash, leak or timeout.
#
#   scripts/fuzz.sh            # CI smoke run: 30 s per target
#   scripts/fuzz.sh 600        # a long run
#   FUZZ_TARGETS="ops_vs_model log_replay" scripts/fuzz.sh 120
#   FUZZ_SANITIZER=address scripts/fuzz.sh 300   # ASan (slower build and runs)
#
# cargo-fuzz is installed from crates.io at a pinned version if missing. The
# toolchain here is stable, so nightly flags are unlocked with RUSTC_BOOTSTRAP.
# Working corpora grow in fuzz/corpus/<target>/ (only seed* files are
# checked in); crashes land in fuzz/artifacts/<target>/. Each target's last
# libFuzzer status line (executions, cov:, exec/s) is printed at the end.
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
CARGO_FUZZ_VERSION="0.13.2"
SANITIZER="${FUZZ_SANITIZER:-none}"
ALL_TARGETS="record_decode key_decode import_line page_frame ops_vs_model log_replay"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
# The stateful targets create a database per input: keep them in memory.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    # --debug: cargo-fuzz only drives cargo and libFuzzer, and its
    # optimized build cost a CI run (a clean machine) minutes.
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --debug
fi

echo "fuzz.sh: building the targets (sanitizer: $SANITIZER)" >&2
cargo fuzz build --sanitizer "$SANITIZER"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0
for t in $TARGETS; do
    mkdir -p "corpus/$t"
    args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1)
    case "$t" in
        import_line) args+=(-dict=dict/import_line.dict -max_len=4096) ;;
        record_decode | key_decode) args+=(-max_len=4096) ;;
        # Stateful targets: small inputs keep each execution fast.
        ops_vs_model) args+=(-max_len=256) ;;
        log_replay) args+=(-max_len=2048) ;;
    esac
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s" >&2
    if cargo fuzz run --sanitizer "$SANITIZER" "$t" "corpus/$t" -- "${args[@]}" \
        >"$logs/$t.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=1
        tail -n 60 "$logs/$t.log" >&2
        ls -1 "artifacts/$t" 2>/dev/null | sed "s|^|fuzz.sh: reproducer fuzz/artifacts/$t/|" >&2 || true
    fi
    last="$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -n 1 || true)"
    runs="$(grep -E '^stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}' || true)"
    summary+=("$(printf '%-14s %-6s runs=%s  %s' "$t" "$status" "${runs:-?}" "$last")")
done

echo "fuzz.sh: summary (${SECONDS_PER_TARGET}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$failed"
