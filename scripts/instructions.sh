#!/usr/bin/env bash
# Instructions per event of the engine's in-process pipeline (issue 8's "2 M events/s per core"
# row), counted by callgrind. The count is the same for the same build whatever else the machine
# is doing, so two builds can be compared on a noisy machine, where criterion's wall-clock
# medians of the same binary move by a third from one minute to the next.
#
#   scripts/instructions.sh                        # pipeline/in_process_filter_remap_blackhole
#   scripts/instructions.sh in_process_passthrough  # any bench of hot_path that runs Pipeline::apply
#
# Counts `bench_support::Pipeline::apply` (one call per event) inclusive of everything it calls,
# as called from criterion's measurement loop; setup and criterion's analysis are left out.
# Needs valgrind (callgrind_annotate comes with it) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_annotate jq; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: needs $tool" >&2; exit 1; }
done

filter=${1:-pipeline/in_process_filter_remap}
echo "building the hot_path bench…" >&2
bin=$(cargo bench -p veltrix-engine --bench hot_path --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.executable != null and .target.name == "hot_path") | .executable' | tail -n1)
[ -x "$bin" ] || { echo "instructions.sh: no hot_path bench binary" >&2; exit 1; }

out=$(mktemp /tmp/veltrix-callgrind.XXXXXX)
trap 'rm -f "$out"' EXIT
echo "counting \"$filter\" under callgrind (about a minute)…" >&2
(cd crates/veltrix-engine &&
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --bench --profile-time 3 "$filter" \
    >/dev/null 2>&1)

# In the caller tree, Pipeline::apply's entry (the one in bench_support.rs; parts inlined from
# other files have entries of their own) follows its callers, with inclusive counts and calls:
#   595,310,156 (87.68%)  < …/benches/hot_path.rs:criterion::bencher::Bencher<M>::iter (71,000x)
#     8,439,151 ( 1.24%)  < …/benches/hot_path.rs:hot_path::benches (1,000x)
#   603,749,307 (88.92%)  *  …/src/bench_support.rs:veltrix_engine::bench_support::Pipeline::apply
callgrind_annotate --tree=caller --inclusive=yes "$out" 2>/dev/null |
  awk '
    /<.*criterion::bencher::Bencher<M>::iter \(/ { line = $0; instructions = $1 }
    /\*  .*bench_support\.rs:veltrix_engine::bench_support::Pipeline::apply( \[|$)/ && line != "" {
      calls = line; sub(/.*\(/, "", calls); sub(/x\).*/, "", calls)
      gsub(",", "", calls); gsub(",", "", instructions)
      printf "instructions per event: %.0f (%s over %s events)\n", instructions / calls, instructions, calls
      found = 1; exit
    }
    /^$/ { line = "" }
    END { if (!found) { print "instructions.sh: Pipeline::apply not found in the profile" > "/dev/stderr"; exit 1 } }
  '
