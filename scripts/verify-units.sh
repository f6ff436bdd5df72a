#!/usr/bin/env bash
# Verify the systemd units in systemd/ offline with `systemd-analyze verify`.
#
# Usage: scripts/verify-units.sh [path/to/orch]   (default: target/release/orch,
# else target/debug/orch). Needs systemd-analyze (systemd >= 252 tested); no
# running systemd is required.
#
# systemd-analyze prints unknown keys and bad values but still exits 0, so any
# output counts as a failure. It also checks that ExecStart= exists and that
# Documentation=man:… pages resolve, so ExecStart is pointed at the built
# binary and MANPATH at the committed man pages. A .timer whose .service is
# missing is not detected by systemd-analyze, so that is checked here too.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
if [[ -z $bin ]]; then
    for candidate in "$root/target/release/orch" "$root/target/debug/orch"; do
        if [[ -x $candidate ]]; then bin=$candidate; break; fi
    done
fi
if [[ -z $bin || ! -x $bin ]]; then
    echo "verify-units: no orch binary (build it first or pass its path)" >&2
    exit 2
fi
# ExecStart= needs an absolute path.
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if ! command -v systemd-analyze >/dev/null; then
    echo "verify-units: systemd-analyze not found; skipping" >&2
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/units" "$work/man/man1"
cp "$root"/man/*.1 "$work/man/man1/"

fail=0
for unit in "$root"/systemd/*.service "$root"/systemd/*.timer "$root"/systemd/*.socket "$root"/systemd/*.path; do
    name=$(basename "$unit")
    sed "s|/usr/bin/orch|$bin|g" "$unit" > "$work/units/$name"
    # Templates are verified as instance 1 (the template stays for socket lookups).
    if [[ $name == *@.* ]]; then
        cp "$work/units/$name" "$work/units/${name/@./@1.}"
    fi
done

for timer in "$work"/units/*.timer; do
    service=${timer%.timer}.service
    if [[ ! -e $service ]]; then
        echo "verify-units: $(basename "$timer") has no matching service" >&2
        fail=1
    fi
done
for socket in "$work"/units/*.socket; do
    base=$(basename "${socket%.socket}")
    if [[ ! -e "$work/units/$base@1.service" && ! -e "$work/units/$base.service" ]]; then
        echo "verify-units: $(basename "$socket") has no matching service" >&2
        fail=1
    fi
done

out=$(cd "$work/units" && MANPATH="$work/man" SYSTEMD_LOG_COLOR=0 \
    systemd-analyze verify $(ls | grep -v '@\.') 2>&1) || fail=1
if [[ -n $out ]]; then
    echo "$out" >&2
    fail=1
fi
if (( fail )); then
    echo "verify-units: FAILED" >&2
    exit 1
fi
echo "verify-units: $(ls "$work/units" | grep -vc '@\.') units OK"
