#!/usr/bin/env bash
# Benchmark: N no-op tasks (/bin/true) through `orchestra run` against the plain baselines,
# measured in the same invocation so that machine noise hits both alike.
#
#   wide : N independent tasks at concurrency P   vs  `seq N | xargs -P P -n1 /bin/true`
#   chain: N tasks each depending on the previous  vs  a sequential shell loop
#
# orchestra does its full job here: state persisted in sled (flushed before each dispatch),
# stdout/stderr captured to files, events on the in-process bus, logs.jsonl, summary, report.
#
# usage: bench/noop.sh [N=1000] [P=2] [REPEATS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
P=${2:-2}
REPEATS=${3:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orchestra-target}"
cargo build --release --locked -q -p orchestra
BIN="$CARGO_TARGET_DIR/release/orchestra"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
  echo "name: wide"
  echo "tasks:"
  for i in $(seq 1 "$N"); do
    echo "  - { id: t$i, exec: { program: /bin/true } }"
  done
} >"$work/wide.yaml"
{
  echo "name: chain"
  echo "tasks:"
  echo "  - { id: t1, exec: { program: /bin/true } }"
  for i in $(seq 2 "$N"); do
    echo "  - { id: t$i, depends_on: [t$((i - 1))], exec: { program: /bin/true } }"
  done
} >"$work/chain.yaml"

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

orchestra_run() { "$BIN" run "$1" --workers "$P" --runs-dir "$work/runs" --quiet; }
xargs_wide() { seq 1 "$N" | xargs -P "$P" -n1 /bin/true; }
loop_chain() { bash -c "for _ in \$(seq 1 $N); do /bin/true; done"; }

# Interleaved (orchestra, baseline, orchestra, baseline, ...) so that drifting machine noise
# hits both sides alike; the median of each side is compared.
: >"$work/wide_o"; : >"$work/wide_x"; : >"$work/chain_o"; : >"$work/chain_l"
for _ in $(seq 1 "$REPEATS"); do
  timed orchestra_run "$work/wide.yaml" >>"$work/wide_o"
  timed xargs_wide >>"$work/wide_x"
  timed orchestra_run "$work/chain.yaml" >>"$work/chain_o"
  timed loop_chain >>"$work/chain_l"
done
wide_o=$(median <"$work/wide_o")
wide_x=$(median <"$work/wide_x")
chain_o=$(median <"$work/chain_o")
chain_l=$(median <"$work/chain_l")

# The runs really happened and succeeded: every summary says so.
ok=$(grep -l '"status": "succeeded"' "$work"/runs/*/summary.json | wc -l)
expected=$((2 * REPEATS))
if [ "$ok" -ne "$expected" ]; then
  echo "error: only $ok of $expected orchestra runs succeeded" >&2
  exit 1
fi

printf 'N=%s P=%s median of %s runs (seconds)\n' "$N" "$P" "$REPEATS"
awk -v o="$wide_o" -v x="$wide_x" 'BEGIN { printf "wide : orchestra %.3f  xargs -P  %.3f  ratio %.2fx (target <= 1.3x)\n", o, x, o / x }'
awk -v o="$chain_o" -v x="$chain_l" 'BEGIN { printf "chain: orchestra %.3f  shell loop %.3f  ratio %.2fx (target <= 1.4x)\n", o, x, o / x }'
