#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (coverage-guided libFuzzer, debug assertions and overflow
# checks on) for a bounded time each and fails on the first crash (panic), timeout or
# out-of-memory.
#
#   scripts/fuzz.sh                    every target, FUZZ_SECONDS (default 30) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh decode_body config
#   scripts/fuzz.sh --replay TARGET FILE...   runs TARGET once over each FILE (a crash) and exits
#
# Stable Rust only: the binaries are built with LLVM's SanitizerCoverage passes through stable
# `-C` flags (what cargo fuzz passes, minus `-Zsanitizer=address`, which needs nightly), so the
# fuzzing is coverage-guided but has no AddressSanitizer (the code under test is safe Rust).
# libFuzzer itself is C++ built by libfuzzer-sys's build script (needs a C++ compiler).
#
# Seeds are read from fuzz/seeds/<target>/ (committed); what a run discovers goes to
# fuzz/corpus/<target>/ (not committed) and a crashing input to fuzz/artifacts/<target>/, which
# `scripts/fuzz.sh --replay <target> fuzz/artifacts/<target>/crash-…` replays. Turn a crash into a regression test in the crate that owns the code before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
# Per input: a run slower than this counts as a hang; more memory than this as a blow-up.
timeout_per_input="${FUZZ_TIMEOUT_SECONDS:-10}"
rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}"

replay=""
if [ "${1:-}" = "--replay" ]; then
    replay="${2:?usage: scripts/fuzz.sh --replay TARGET FILE...}"
    shift 2
fi

all_targets=()
for file in fuzz/fuzz_targets/*.rs; do
    all_targets+=("$(basename "${file}" .rs)")
done

host="$(rustc -vV | sed -n 's/^host: //p')"
# The root target directory, under the host triple: RUSTFLAGS below then reach only the fuzz
# build (not build scripts, not the workspace's own builds).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${PWD}/target}"
bin_dir="${CARGO_TARGET_DIR}/${host}/release"

# cargo fuzz's instrumentation flags (cargo-fuzz 0.13, `BuildOptions`), all stable.
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing"

# One build of every target, so the time limits below are spent fuzzing rather than compiling.
cargo build --manifest-path fuzz/Cargo.toml --locked --release --target "${host}" --bins

if [ -n "${replay}" ]; then
    exec "${bin_dir}/${replay}" -runs=1 "$@"
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/${target}" "fuzz/artifacts/${target}"
    log="$(mktemp)"
    echo "=== fuzzing ${target} for ${seconds}s" >&2
    status=0
    "${bin_dir}/${target}" "fuzz/corpus/${target}" "fuzz/seeds/${target}" \
        -artifact_prefix="fuzz/artifacts/${target}/" -max_total_time="${seconds}" \
        -timeout="${timeout_per_input}" -rss_limit_mb="${rss_limit_mb}" \
        -print_final_stats=1 >"${log}" 2>&1 || status=$?
    tail -n 30 "${log}" >&2
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${log}" | tail -1)"
    coverage="$(grep -o 'cov: [0-9]*' "${log}" | tail -1 || true)"
    corpus="$(find "fuzz/corpus/${target}" -type f | wc -l)"
    rm -f "${log}"
    if [ "${status}" -ne 0 ]; then
        echo "fuzz: ${target} FAILED (exit ${status}); the input is in fuzz/artifacts/${target}/" >&2
        exit 1
    fi
    summary+=("${target}: ${runs:-?} executions in ${seconds}s, libFuzzer ${coverage:-cov: ?} (coverage points), ${corpus} corpus files, no crash")
done

echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
