#!/usr/bin/env bash
# Soak: the chaos test of tests/chaos.rs, many times, longer and bigger than in
# the suite. Each run prints its seed; a failure prints the seed to replay with
#   ORCH_CHAOS_SEED=<seed> cargo nextest run --test chaos --no-capture
# Usage: scripts/chaos-soak.sh [RUNS] (default 10); ORCH_CHAOS_SECONDS and
# ORCH_CHAOS_TASKS set the kill phase and the tasks per repository.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
export ORCH_CHAOS_SECONDS="${ORCH_CHAOS_SECONDS:-60}" ORCH_CHAOS_TASKS="${ORCH_CHAOS_TASKS:-6}"
cargo build --locked --quiet --tests
failed=0
for i in $(seq 1 "$runs"); do
  if out=$(cargo nextest run --locked --test chaos --no-capture 2>&1); then
    echo "run $i: ok   $(grep -o 'Kills.*' <<<"$out")"
  else
    failed=$((failed + 1))
    seed=$(grep -o 'seed [0-9]*' <<<"$out" | head -1 | cut -d' ' -f2)
    mkdir -p target/chaos-soak && printf '%s\n' "$out" > "target/chaos-soak/$seed.log"
    echo "run $i: FAIL seed $seed (full output: target/chaos-soak/$seed.log)"
    grep -E 'panicked|seed [0-9]+:' <<<"$out" | head -5
  fi
done
echo "$((runs - failed))/$runs runs ended with every task done"
[ "$failed" = 0 ]
