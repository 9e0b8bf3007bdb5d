#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step_* functions and the trap handler are called indirectly
# The long versions of the fault tests behind GUARANTEES.md: the same tests CI runs, with their
# sizes raised through environment variables. Prints a progress line every
# VELTRIX_SOAK_PROGRESS_SECS (plus the tests' own `[soak] …: done/total` lines) and a summary
# with each step's result, duration and figures. Exits non-zero if any step failed.
#
#   scripts/soak.sh                                  # every step at the sizes below
#   VELTRIX_SOAK_STEPS="crash failpoints" scripts/soak.sh
#   VELTRIX_SOAK_KILLS=20 VELTRIX_SOAK_OUTAGE_SECS=15 scripts/soak.sh   # CI's promise sizes
#
# Knobs (default = soak size; CI's size in brackets):
#   VELTRIX_SOAK_KILLS           200   [20]    kill -9 under load           (promises.rs)
#   VELTRIX_SOAK_OUTAGE_SECS     300   [15]    sink outage                  (promises.rs)
#   VELTRIX_SOAK_OVERLOAD_SECS   300   [10]    overload                     (promises.rs)
#   VELTRIX_SOAK_POISON_EVENTS   100000 [5000] events, 1 % poison           (promises.rs)
#   VELTRIX_SOAK_CRASH_POINTS    20000 [1000]  power-loss crash points      (veltrix-log crash.rs;
#                                              20 points per seed, so 1,000 seeds)
#   VELTRIX_SOAK_FAILPOINT_RUNS  1000  [50]    runs per log failpoint       (veltrix-log failpoints.rs)
#   VELTRIX_SOAK_DAMAGE_CASES    20000 [500]   cases per damage property    (veltrix-log model.rs)
#   VELTRIX_SOAK_RECOVERY_MIB    1024  [48]    damaged log size, real disk  (veltrix-log damage.rs)
#   VELTRIX_SOAK_ENGINE_CRASHES  50    [8]     engine aborts at its failpoint (veltrix failpoints.rs)
#   VELTRIX_SOAK_SEED            fixed         first seed of crash.rs / failpoints.rs
#   VELTRIX_SOAK_STEPS           all steps     which steps, in order
#   VELTRIX_SOAK_PROGRESS_SECS   60            how often the progress line is printed
#
# Steps (add one: a function `step_NAME` and NAME in ALL_STEPS):
#   crash       power loss at arbitrary crash points      crates/veltrix-log/tests/crash.rs
#   failpoints  crashes at the log's failpoints           crates/veltrix-log/tests/failpoints.rs
#   damage      bit flips and truncation, model-based     crates/veltrix-log/tests/model.rs
#   recovery    recovery time of a damaged log (real fs)  crates/veltrix-log/tests/damage.rs
#   engine      the binary aborted between sink confirmation and ack, and bit rot in a stopped
#               engine's queue     crates/veltrix/tests/failpoints.rs, tests/corruption.rs
#   promises    kill -9, SIGTERM, sink outage, overload, disk full, poison events against the
#               real binary
#               crates/veltrix/tests/promises.rs
set -euo pipefail
cd "$(dirname "$0")/.."

export VELTRIX_SOAK_KILLS=${VELTRIX_SOAK_KILLS:-200}
export VELTRIX_SOAK_OUTAGE_SECS=${VELTRIX_SOAK_OUTAGE_SECS:-300}
export VELTRIX_SOAK_OVERLOAD_SECS=${VELTRIX_SOAK_OVERLOAD_SECS:-300}
export VELTRIX_SOAK_POISON_EVENTS=${VELTRIX_SOAK_POISON_EVENTS:-100000}
CRASH_POINTS=${VELTRIX_SOAK_CRASH_POINTS:-20000}
FAILPOINT_RUNS=${VELTRIX_SOAK_FAILPOINT_RUNS:-1000}
DAMAGE_CASES=${VELTRIX_SOAK_DAMAGE_CASES:-20000}
RECOVERY_MIB=${VELTRIX_SOAK_RECOVERY_MIB:-1024}
ENGINE_CRASHES=${VELTRIX_SOAK_ENGINE_CRASHES:-50}
PROGRESS_SECS=${VELTRIX_SOAK_PROGRESS_SECS:-60}
ALL_STEPS="crash failpoints damage recovery engine promises"
STEPS=${VELTRIX_SOAK_STEPS:-$ALL_STEPS}

# VELTRIX_SOAK makes the log tests print their `[soak] label: done/total` lines.
export VELTRIX_SOAK=1 CARGO_TERM_COLOR=never
if [[ -n ${VELTRIX_SOAK_SEED:-} ]]; then
  export VELTRIX_FAULT_SEED=$VELTRIX_SOAK_SEED
fi

# The log tests run in release (tight loops); the binary's tests build it with failpoints.
LOG_TEST=(cargo test --release -p veltrix-log --features failpoints)

step_crash() {
  VELTRIX_FAULT_CRASH_POINTS=$CRASH_POINTS \
    "${LOG_TEST[@]}" --test crash -- --nocapture
}

step_failpoints() {
  VELTRIX_FAULT_RUNS=$FAILPOINT_RUNS \
    "${LOG_TEST[@]}" --test failpoints -- --nocapture
}

step_damage() {
  VELTRIX_FAULT_DAMAGE_CASES=$DAMAGE_CASES \
    "${LOG_TEST[@]}" --test model -- --nocapture bit_flips truncation mixed_damage
}

step_recovery() {
  VELTRIX_FAULT_RECOVERY_MIB=$RECOVERY_MIB VELTRIX_FAULT_SEGMENT_MIB=64 \
    "${LOG_TEST[@]}" --test damage -- --nocapture
}

step_engine() {
  VELTRIX_FAULT_ENGINE_CRASHES=$ENGINE_CRASHES \
    cargo test -p veltrix --features failpoints --test failpoints --test corruption \
    -- --nocapture --test-threads=1
}

step_promises() {
  cargo test -p veltrix --release --test promises -- --nocapture --test-threads=1
}

started=$SECONDS
work=$(mktemp -d)
heartbeat_pid=
cleanup() {
  if [[ -n $heartbeat_pid ]]; then
    kill "$heartbeat_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The periodic progress line: which step, how long it and the whole soak have been running.
heartbeat() {
  local step=$1 step_started=$2
  while sleep "$PROGRESS_SECS"; do
    echo "[soak] progress: step $step running for $((SECONDS - step_started)) s, soak $((SECONDS - started)) s" >&2
  done
}

echo "[soak] steps: $STEPS" >&2
echo "[soak] kills $VELTRIX_SOAK_KILLS, outage ${VELTRIX_SOAK_OUTAGE_SECS}s, overload ${VELTRIX_SOAK_OVERLOAD_SECS}s," \
  "crash points $CRASH_POINTS, failpoint runs $FAILPOINT_RUNS, damage cases $DAMAGE_CASES," \
  "recovery ${RECOVERY_MIB} MiB, engine crashes $ENGINE_CRASHES, seed ${VELTRIX_SOAK_SEED:-default}" >&2

results=()
failed=0
for current in $STEPS; do
  if [[ " $ALL_STEPS " != *" $current "* ]]; then
    echo "[soak] unknown step '$current' (steps: $ALL_STEPS)" >&2
    exit 2
  fi
  echo "== soak: $current ($((SECONDS - started)) s in)" >&2
  step_started=$SECONDS
  heartbeat "$current" "$step_started" &
  heartbeat_pid=$!
  status=ok
  if ! "step_$current" 2>&1 | tee "$work/$current.log"; then
    status=FAILED
    failed=1
  fi
  kill "$heartbeat_pid" 2>/dev/null || true
  wait "$heartbeat_pid" 2>/dev/null || true
  heartbeat_pid=
  results+=("$current: $status in $((SECONDS - step_started)) s")
done

# The summary: each step's result, then the figure lines the tests print and cargo's verdicts.
echo
echo "== soak summary ($((SECONDS - started)) s in all)"
for line in "${results[@]}"; do
  echo "  $line"
done
for current in $STEPS; do
  echo "-- $current"
  grep -E '^(power loss|crash at|recovery of a damaged log|engine crash|kill -9|SIGTERM|sink outage|overload|disk full|queue recovered|test result|test .* FAILED)' \
    "$work/$current.log" | sed 's/^/  /' || true
done
exit "$failed"
