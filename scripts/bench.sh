#!/usr/bin/env bash
# Every benchmark in one command, summarised in ONE table.
#
# Usage: scripts/bench.sh        (BENCH_* knobs of the benches still apply)
#
# Runs `cargo bench --bench queue`, `--bench reap`, `--bench ingest` and
# `--bench handoff`
# (release build), then measures with the release binary:
#   - peak RSS of `orch status` and of `orch run-agent --next` (one demo-agent
#     run), with /usr/bin/time -v when present, else by polling VmHWM in
#     /proc/<pid>/status;
#   - the duration of a whole `orch demo` in a temporary directory.
# The raw outputs are kept in target/bench/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/target/bench
mkdir -p "$out"
export CARGO_TERM_COLOR=never

for b in queue reap ingest handoff; do
    echo "== cargo bench --bench $b" >&2
    cargo bench --locked --quiet --bench "$b" 2>&2 | tee "$out/$b.txt" >&2
done
cargo build --locked --quiet --release
orch=$root/target/release/orch

# Peak RSS in KiB of the command "$@".
peak_rss_kib() {
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -v "$@" 2>"$out/time.txt" >/dev/null || true
        awk -F': *' '/Maximum resident set size/ {print $2}' "$out/time.txt"
        return
    fi
    "$@" >/dev/null 2>&1 &
    local pid=$! hwm=0 v
    while kill -0 "$pid" 2>/dev/null; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n $v && $v -gt $hwm ]] && hwm=$v
        sleep 0.001
    done
    wait "$pid" || true
    echo "$hwm"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== orch demo (timed)" >&2
start=$(date +%s.%N)
"$orch" demo --state-dir "$work/demo" >"$out/demo.txt" 2>&1
end=$(date +%s.%N)
demo_s=$(echo "$end - $start" | bc -l 2>/dev/null || awk "BEGIN {print $end - $start}")

echo "== peak RSS" >&2
"$orch" demo --state-dir "$work/rss" --setup-only >/dev/null
"$orch" --state-dir "$work/rss" task create --repo demo --title "Measure me" >/dev/null
rss_status=$(peak_rss_kib "$orch" --state-dir "$work/rss" status)
rss_run=$(peak_rss_kib "$orch" --state-dir "$work/rss" run-agent --next)

# Figures from the bench outputs.
num() { grep -oE "$1" "$2" | head -1 | grep -oE '[0-9]+(\.[0-9]+)?' | head -"${3:-1}" | tail -1; }
claim_ratio=$(num 'ratio [0-9.]+ \(goal >= 0.5\)' "$out/queue.txt")
floor_ratio=$(num 'floor ratio [0-9.]+' "$out/queue.txt")
status_line=$(grep -E 'status, 3 queued jobs' "$out/queue.txt" || true)
status_ms=$(echo "$status_line" | grep -oE '[0-9.]+ ms' | head -1 | cut -d' ' -f1)
status_ratio=$(echo "$status_line" | grep -oE 'ratio [0-9.]+x' | grep -oE '[0-9.]+')
big_line=$(grep -E 'status, [0-9]+ running jobs' "$out/queue.txt" || true)
big_ms=$(echo "$big_line" | grep -oE '[0-9.]+ ms' | head -1 | cut -d' ' -f1)
big_ratio=$(echo "$big_line" | grep -oE 'ratio [0-9.]+x' | grep -oE '[0-9.]+')
ingest_ms=$(num 'ingest-webhook [0-9.]+ ms' "$out/ingest.txt")
ingest_ratio=$(num 'ratio [0-9.]+x' "$out/ingest.txt")
orphan_ms=$(grep -E '^\(a\) SIGKILL' "$out/reap.txt" | grep -oE ': [0-9.]+ ms' | grep -oE '[0-9.]+')
reap_ms=$(grep -E '^\(b\) one' "$out/reap.txt" | grep -oE ': [0-9.]+ ms' | grep -oE '[0-9.]+')
live=$(grep -E '^\(b\) one' "$out/reap.txt" | grep -oE 'over [0-9]+' | grep -oE '[0-9]+')

handoff_stage=$(grep -E 'stage -> next stage' "$out/handoff.txt" | sed -E 's/.*: //')
handoff_queued=$(grep -E 'queued -> analyst' "$out/handoff.txt" | sed -E 's/.*: +//')

printf '\n| benchmark | figure | goal |\n|---|---|---|\n'
printf '| hand-off: a stage committed -> next agent starts | %s | < 1 s (timer alone: 30-35 s) |\n' "${handoff_stage:-?}"
printf '| hand-off: work queued -> its agent starts (path unit) | %s | < 1 s (timer alone: 30-35 s) |\n' "${handoff_queued:-?}"
printf '| claim throughput / no-op spawn (8 loops) | %s (the floor, a process that only opens the database and claims: %s) | >= 0.5 |\n' "${claim_ratio:-?}" "${floor_ratio:-?}"
printf '| `orch status` per call (3 jobs) | %s ms, %sx a no-op spawn | <= 5x |\n' "${status_ms:-?}" "${status_ratio:-?}"
printf '| `orch status` per call (2,000 running jobs) | %s ms, %sx a no-op spawn | <= 5x |\n' "${big_ms:-?}" "${big_ratio:-?}"
printf '| `orch ingest-webhook` per call | %s ms, %sx a no-op spawn | <= 5x |\n' "${ingest_ms:-?}" "${ingest_ratio:-?}"
printf '| one reap over %s live jobs | %s ms | < 200 ms |\n' "${live:-10000}" "${reap_ms:-?}"
printf '| orphan detection (SIGKILL -> requeued) | %s ms | < 1000 ms |\n' "${orphan_ms:-?}"
printf '| peak RSS `orch status` | %s MiB | |\n' "$(awk "BEGIN {printf \"%.1f\", ${rss_status:-0}/1024}")"
printf '| peak RSS `orch run-agent --next` (demo agent) | %s MiB | |\n' "$(awk "BEGIN {printf \"%.1f\", ${rss_run:-0}/1024}")"
printf '| `orch demo` (7 stages, offline) | %.1f s | |\n' "$demo_s"
