#!/usr/bin/env bash
# Benchmark: distributed mode (real nats-server, coordinator and workers as processes on
# loopback, started by scripts/cluster) against embedded mode and against the ideal.
#
#   noop : N no-op tasks (/bin/true). NATS mode (1 coordinator, 1 worker with 2 slots,
#          `orchestra run --nats`) vs embedded mode (`orchestra run --workers 2`); both with
#          2 × 2 attempts in flight. Target: NATS <= 1.5x embedded.
#   sleep: S tasks of `sleep 0.1` on 4 workers × 5 slots, max_parallel M (>= 20), vs the
#          ideal S × 0.1 s / 20 (1.0 s for S = 200). Target: <= 1.15x the ideal.
#
# Each side is timed end to end (CLI start to exit, results fetched home into the run
# directory), interleaved (nats, embedded, nats, embedded, ...) so that drifting machine noise
# hits both alike; the median of each side is compared. The NATS server runs with the shipped
# deploy/nats.conf (JetStream file storage, sync_interval: always). Every run must succeed.
#
# usage: bench/nats.sh [REPEATS=3] [N=1000] [S=200] [M=20]
# Binaries are built with `cargo build --release`; clusters live in a temporary directory and
# are stopped (only the processes this script started) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
N=${2:-1000}
S=${3:-200}
M=${4:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orchestra-target}"
cargo build --release --locked -q -p orchestra --bins
export ORCHESTRA_BIN_DIR="$CARGO_TARGET_DIR/release"
BIN="$ORCHESTRA_BIN_DIR/orchestra"
work=$(mktemp -d)
clusters=()
cleanup() {
  local dir
  for dir in "${clusters[@]}"; do scripts/cluster down --dir "$dir" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

{
  echo "name: noop"
  echo "tasks:"
  for i in $(seq 1 "$N"); do
    echo "  - { id: t$i, exec: { program: /bin/true } }"
  done
} >"$work/noop.yaml"
{
  echo "name: sleep"
  echo "tasks:"
  for i in $(seq 1 "$S"); do
    echo "  - { id: t$i, exec: { program: /bin/sleep, args: ['0.1'] } }"
  done
} >"$work/sleep.yaml"
printf 'limits:\n  max_parallel: %s\n' "$M" >"$work/sleep-config.yaml"

# Starts a cluster in $work/$1 with $2 workers × $3 slots; sets URL, USER_ and PASSWORD.
cluster_up() {
  local dir="$work/$1" lines
  clusters+=("$dir")
  lines=$(scripts/cluster up --dir "$dir" --workers "$2" --slots "$3" 2>"$work/$1.up.log") || {
    cat "$work/$1.up.log" >&2
    exit 1
  }
  URL=$(sed -n 's/^export ORCHESTRA_NATS_URL=//p' <<<"$lines")
  USER_=$(sed -n 's/^export ORCHESTRA_NATS_USER=//p' <<<"$lines")
  PASSWORD=$(sed -n 's/^export ORCHESTRA_NATS_PASSWORD=//p' <<<"$lines")
}

now() { date +%s.%N; }
# Wall time of one command, in seconds.
timed() {
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>&1
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

nats_run() {
  ORCHESTRA_NATS_PASSWORD="$PASSWORD" "$BIN" run "$1" --nats "$URL" --user "$USER_" \
    --runs-dir "$work/runs" --quiet "${@:2}"
}
embedded_run() { "$BIN" run "$1" --workers 2 --runs-dir "$work/runs" --quiet; }

: >"$work/noop_n"; : >"$work/noop_e"; : >"$work/sleep_n"
cluster_up noop 1 2
nats_run "$work/noop.yaml" --workers 2 >/dev/null 2>&1 # warm-up: stream, consumer, buckets
for _ in $(seq 1 "$REPEATS"); do
  timed nats_run "$work/noop.yaml" --workers 2 >>"$work/noop_n"
  timed embedded_run "$work/noop.yaml" >>"$work/noop_e"
done
scripts/cluster down --dir "$work/noop" >/dev/null 2>&1

cluster_up sleep 4 5
nats_run "$work/sleep.yaml" --config "$work/sleep-config.yaml" >/dev/null 2>&1 # warm-up
for _ in $(seq 1 "$REPEATS"); do
  timed nats_run "$work/sleep.yaml" --config "$work/sleep-config.yaml" >>"$work/sleep_n"
done
scripts/cluster down --dir "$work/sleep" >/dev/null 2>&1

# The runs really happened and succeeded (warm-ups included): every summary says so.
ok=$(grep -l '"status": "succeeded"' "$work"/runs/*/summary.json | wc -l)
expected=$((3 * REPEATS + 2))
if [ "$ok" -ne "$expected" ]; then
  echo "error: only $ok of $expected orchestra runs succeeded" >&2
  exit 1
fi

noop_n=$(median <"$work/noop_n")
noop_e=$(median <"$work/noop_e")
sleep_n=$(median <"$work/sleep_n")
ideal=$(awk -v s="$S" 'BEGIN { printf "%.4f", s * 0.1 / 20 }')
printf 'median of %s runs (seconds)\n' "$REPEATS"
awk -v o="$noop_n" -v x="$noop_e" -v n="$N" 'BEGIN { printf "noop : %s tasks  nats %.3f  embedded %.3f  ratio %.2fx (target <= 1.5x)\n", n, o, x, o / x }'
awk -v o="$sleep_n" -v x="$ideal" -v s="$S" -v m="$M" 'BEGIN { printf "sleep: %s x 0.1s on 4x5 slots (max_parallel %s)  nats %.3f  ideal %.3f  ratio %.2fx (target <= 1.15x)\n", s, m, o, x, o / x }'
