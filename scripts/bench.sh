#!/usr/bin/env bash
# The end-to-end benchmark suite (issue 8) in one command: builds release, then for each workload
# measures the HTTP ceiling (`veltrix bench discard-server`: reads and discards the same bodies)
# and the engine (`veltrix bench --spawn deploy/bench/*.toml`), and prints a Markdown table.
#
#   scripts/bench.sh                       # 60 s per run (+3 s warm-up)
#   BENCH_DURATION=5s scripts/bench.sh     # a quick check
#   BENCH_LOG=1 scripts/bench.sh           # also run the raw log append benchmark (criterion)
#
# Environment: BENCH_DURATION (default 60s), BENCH_WARMUP (3s), BENCH_OUT (a directory for the
# raw JSON of every run; default a temp dir), VELTRIX_BENCH_DIR (the engine's data and file sink
# output, emptied before each run; default /tmp/veltrix-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-60s}
WARMUP=${BENCH_WARMUP:-3s}
OUT=${BENCH_OUT:-$(mktemp -d /tmp/veltrix-bench-results.XXXXXX)}
export VELTRIX_BENCH_DIR=${VELTRIX_BENCH_DIR:-/tmp/veltrix-bench}
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "bench.sh: needs jq" >&2; exit 1; }

echo "building release…" >&2
cargo build --release -q -p veltrix
BIN=target/release/veltrix
export VELTRIX_LOG=warn

# ceiling NAME ARGS…: the bench against a discard server, JSON into $OUT/NAME.ceiling.json
ceiling() {
  local name=$1; shift
  local urlfile="$OUT/$name.discard-url"
  : >"$urlfile"
  "$BIN" bench discard-server >"$urlfile" &
  local pid=$!
  for _ in $(seq 100); do [ -s "$urlfile" ] && break; sleep 0.05; done
  "$BIN" bench --url "$(head -n1 "$urlfile")" --api http://127.0.0.1:9 \
    --duration "$DURATION" --warmup "$WARMUP" --json "$@" >"$OUT/$name.ceiling.json" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# engine NAME CONFIG ARGS…: the bench against `veltrix run -c CONFIG`, JSON into $OUT/NAME.veltrix.json
engine() {
  local name=$1 config=$2; shift 2
  rm -rf "$VELTRIX_BENCH_DIR"
  mkdir -p "$VELTRIX_BENCH_DIR"
  "$BIN" bench --spawn "$config" --duration "$DURATION" --warmup "$WARMUP" --json "$@" \
    >"$OUT/$name.veltrix.json" || true
  rm -rf "$VELTRIX_BENCH_DIR"
}

NAMES=(ndjson-fsync-file ndjson-memory-blackhole structured-64 structured-64-memory e2e-10k)
declare -A TITLE=(
  [ndjson-fsync-file]="NDJSON 1000 × ~250 B, fsync + VRL + file, max rate"
  [ndjson-memory-blackhole]="NDJSON 1000 × ~250 B, memory + VRL + blackhole, max rate"
  [structured-64]="single-event structured, 64 connections, fsync + VRL + file, max rate"
  [structured-64-memory]="single-event structured, 64 connections, memory + VRL + blackhole, max rate"
  [e2e-10k]="steady 10,000 events/s in batches of 10, fsync + VRL + file"
)
declare -A CONFIG=(
  [ndjson-fsync-file]=deploy/bench/fsync-file.toml
  [ndjson-memory-blackhole]=deploy/bench/memory-blackhole.toml
  [structured-64]=deploy/bench/fsync-file.toml
  [structured-64-memory]=deploy/bench/memory-blackhole.toml
  [e2e-10k]=deploy/bench/fsync-file.toml
)
declare -A ARGS=(
  [ndjson-fsync-file]="--rate max --batch 1000 --payload-bytes 250 --connections 8 --content-type ndjson"
  [ndjson-memory-blackhole]="--rate max --batch 1000 --payload-bytes 250 --connections 8 --content-type ndjson"
  [structured-64]="--rate max --payload-bytes 250 --connections 64 --content-type structured"
  [structured-64-memory]="--rate max --payload-bytes 250 --connections 64 --content-type structured"
  [e2e-10k]="--rate 10000 --batch 10 --payload-bytes 250 --connections 8 --content-type ndjson"
)

for name in "${NAMES[@]}"; do
  echo "$name: HTTP ceiling ($DURATION)…" >&2
  # shellcheck disable=SC2086
  ceiling "$name" ${ARGS[$name]}
  echo "$name: veltrix ($DURATION)…" >&2
  # shellcheck disable=SC2086
  engine "$name" "${CONFIG[$name]}" ${ARGS[$name]}
done

# Formatting helpers (jq): rates in k/s, seconds in ms, bytes in MiB.
JQ_DEFS='
def rate: if . == null then "—" elif . >= 1000000 then "\(. / 10000 | round / 100) M" elif . >= 1000 then "\(. / 100 | round / 10) k" else "\(round)" end;
def ms: if . == null then "—" else "\(. * 100000 | round / 100) ms" end;
def mib: if . == null then "—" else "\(. / 104857.6 | round / 10) MiB" end;
def cores: if . == null then "—" else "\(. * 100 | round / 100)" end;
'

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ); measured ${DURATION} after ${WARMUP} warm-up"
echo
echo "| workload | Veltrix events/s | ceiling events/s | ratio | request p50 / p99 | e2e p50 / p99 (≤ bucket) | engine CPU (cores) | peak RSS | rejected |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in "${NAMES[@]}"; do
  v="$OUT/$name.veltrix.json" c="$OUT/$name.ceiling.json"
  [ -s "$v" ] || echo '{}' >"$v"
  [ -s "$c" ] || echo '{}' >"$c"
  jq -r --arg title "${TITLE[$name]}" --slurpfile c "$c" "$JQ_DEFS"'
    . as $v | $c[0] as $c |
    "| \($title) | \($v.events_per_second | rate) | \($c.events_per_second | rate) | " +
    (if ($v.events_per_second // 0) > 0 and ($c.events_per_second // 0) > 0
       then "\($v.events_per_second / $c.events_per_second * 100 | round / 100)" else "—" end) +
    " | \($v.request_latency_seconds.p50 | ms) / \($v.request_latency_seconds.p99 | ms)" +
    " | \($v.e2e_latency_seconds.p50 | ms) / \($v.e2e_latency_seconds.p99 | ms)" +
    " | \($v.engine.cpu_cores | cores) | \($v.engine.rss_max_bytes | mib)" +
    " | \($v.rejected_requests // {} | to_entries | map("\(.key): \(.value)") | join(", ") | if . == "" then "none" else . end) |"
  ' "$v"
done
echo
echo "Ceiling = \`veltrix bench discard-server\` (reads each body fully, answers 202, parses nothing) with the same bodies and load. Request latency from an HDR histogram, measured from the scheduled send time (open loop; closed loop at max rate). E2e latency (accepted → delivered) from the engine's veltrix_e2e_latency_seconds histogram: bucket upper bounds. Raw JSON: $OUT"

# The disk ceiling: the raw log append rate.
EST=target/criterion/log/append_batched/new/estimates.json
if [ "${BENCH_LOG:-0}" = 1 ]; then
  echo "running cargo bench -p veltrix-log -- append_batched…" >&2
  cargo bench -q -p veltrix-log --bench log -- 'log/append_batched$' >&2
fi
echo
if [ -s "$EST" ]; then
  rate=$(jq -r '1000000 / (.median.point_estimate / 1e9) | . / 10000 | round / 100' "$EST")
  how=$([ "${BENCH_LOG:-0}" = 1 ] && echo "measured in this run" || echo "criterion result of $(date -u -r "$EST" +%Y-%m-%dT%H:%MZ) in target/criterion; BENCH_LOG=1 re-runs it")
  echo "Disk ceiling: veltrix-log append_batched (1,000 × ~200 B records per fsync'd group commit): ${rate} M records/s ($how)."
else
  echo "Disk ceiling: not measured in this run (BENCH_LOG=1 runs \`cargo bench -p veltrix-log -- append_batched\`); BENCHMARKS.md records 2.20 M records/s (1,000 × ~200 B per group commit, fsync) on the reference machine."
fi
