#!/usr/bin/env bash
# Runs `make test` many times in a row on this tree while another build keeps both cores busy,
# to catch tests that fail only on a loaded machine (timing, ordering, bounded waits).
#
#   tests/loop.sh [-n RUNS] [--keep-going] [--no-load] [--log-dir DIR]
#
#   -n RUNS        how many runs of `make test` (default 20; a bare number works too)
#   --keep-going   run them all even after a failure (default: stop at the first failure)
#   --no-load      no background build (for comparison)
#   --log-dir DIR  where each run's full log and the summary go (default: a new temp dir)
#
# The load: a clone of this tree's HEAD in a temp dir, built in a loop with
# `nice -n 0 cargo build --release -j 2` into its own CARGO_TARGET_DIR, its sources touched
# between builds so that it never stops compiling. The load build uses 16 codegen units and no
# LTO (the release profile's single codegen unit would compile swapd on one core): rustc then
# keeps both of its 2 job slots busy. It and each `make test` run in their own
# process groups, stopped by those groups' ids when the script ends, fails or is interrupted
# (Ctrl-C, SIGTERM).
#
# For each run the summary (stdout and DIR/summary.txt) gives the start time, duration,
# result, the load average at the start and at the end, how busy the CPUs were over the run
# (from /proc/stat: 100 % = every core busy the whole time), and the names of the tests that failed
# (found in the run's log). Exits non-zero if any run failed.
set -uo pipefail

RUNS=20
KEEP_GOING=0
LOAD=1
LOG_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n | --runs) RUNS="${2:?-n needs a number}"; shift 2 ;;
    --keep-going) KEEP_GOING=1; shift ;;
    --no-load) LOAD=0; shift ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a directory}"; shift 2 ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *)
      if [[ "$1" =~ ^[0-9]+$ ]]; then RUNS="$1"; shift
      else echo "loop.sh: unknown argument $1 (see --help)" >&2; exit 2; fi ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "loop.sh: RUNS must be a positive number" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
[[ -n "$LOG_DIR" ]] || LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/swapd-loop.XXXXXX")"
mkdir -p "$LOG_DIR"
SUMMARY="$LOG_DIR/summary.txt"
LOAD_DIR=""
LOAD_PGID=""
RUN_PGID=""

# Signals a process group (first with $2, as Ctrl-C or a plain kill would), waits up to 5 s,
# then SIGKILLs what is left of it.
stop_group() {
  local pgid="$1" first="$2"
  kill "-$first" -- "-$pgid" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pgid" 2>/dev/null
}

stop_all() {
  if [[ -n "$RUN_PGID" ]]; then
    stop_group "$RUN_PGID" INT
    RUN_PGID=""
  fi
  stop_load
}

stop_load() {
  if [[ -n "$LOAD_PGID" ]]; then
    # The whole group: the loop, cargo and the rustc processes it started.
    stop_group "$LOAD_PGID" TERM
    LOAD_PGID=""
  fi
  if [[ -n "$LOAD_DIR" ]]; then
    rm -rf "$LOAD_DIR"
    LOAD_DIR=""
  fi
}
trap stop_all EXIT
trap 'echo "loop.sh: interrupted" >&2; exit 130' INT TERM

say() { echo "$*" | tee -a "$SUMMARY"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# "busy idle" jiffies summed over all CPUs (idle includes iowait).
cpu_ticks() { awk '/^cpu /{idle=$5+$6; busy=$2+$3+$4+$7+$8+$9; print busy, idle}' /proc/stat; }

say "loop.sh: $RUNS run(s) of make test in $REPO at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'); logs in $LOG_DIR"

if [[ $LOAD -eq 1 ]]; then
  LOAD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/swapd-loop-load.XXXXXX")"
  git clone --quiet "$REPO" "$LOAD_DIR/tree" && git -C "$LOAD_DIR/tree" checkout --quiet "$(git rev-parse HEAD)" \
    || { echo "loop.sh: could not clone HEAD for the background build" >&2; exit 1; }
  # setsid: the loop leads its own process group, stopped as a whole by stop_load.
  setsid bash -c '
    cd "$1/tree"
    export CARGO_TARGET_DIR="$1/target"
    while :; do
      CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_LTO=false \
        nice -n 0 cargo build --release -j 2 --quiet >>"$1/build.log" 2>&1
      find src -name "*.rs" -exec touch {} +
    done' load-loop "$LOAD_DIR" </dev/null >/dev/null 2>&1 &
  LOAD_PGID=$!
  say "loop.sh: background build (process group $LOAD_PGID) in $LOAD_DIR"
fi

failures=0
for run in $(seq 1 "$RUNS"); do
  log="$LOG_DIR/run-$run.log"
  started_at="$(date '+%Y-%m-%d %H:%M:%S')"
  load_before="$(loadavg)"
  began=$SECONDS
  read -r busy_before idle_before < <(cpu_ticks)
  # In its own process group (so that an interrupt stops all of it), waited for with `wait`,
  # which a signal interrupts at once.
  setsid make test >"$log" 2>&1 </dev/null &
  RUN_PGID=$!
  if wait "$RUN_PGID"; then result=PASS; else result=FAIL; fi
  RUN_PGID=""
  took=$((SECONDS - began))
  read -r busy_after idle_after < <(cpu_ticks)
  busy=$(( (busy_after - busy_before) * 100 / (busy_after - busy_before + idle_after - idle_before + 1) ))
  line="run $run/$RUNS: started $started_at, ${took}s, $result, load $load_before -> $(loadavg), CPUs ${busy}% busy"
  if [[ $result == FAIL ]]; then
    failures=$((failures + 1))
    # cargo test's failed tests, unittest's FAIL/ERROR lines, the scripts' FAIL lines, and
    # the make target that stopped.
    failed="$(
      {
        sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log"
        sed -n 's/^\(FAIL\|ERROR\): \([^ ]*\) (\(.*\))$/\3/p' "$log"
        grep -E ': FAIL(ED)?: ' "$log" | cut -c1-120
        grep -o 'make: \*\*\* \[[^]]*\]' "$log"
      } | awk '!seen[$0]++' | paste -sd ';' -
    )"
    line="$line; failed: ${failed:-see $log}"
  fi
  say "$line"
  if [[ $result == FAIL && $KEEP_GOING -eq 0 ]]; then
    say "loop.sh: stopping at the first failure (--keep-going runs them all); log: $log"
    break
  fi
done

say "loop.sh: $failures of $run run(s) failed; summary in $SUMMARY"
[[ $failures -eq 0 ]]
