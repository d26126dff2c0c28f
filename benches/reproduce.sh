#!/usr/bin/env bash
# Every run quoted in docs/PERFORMANCE.md, one after the other, each report as JSON in
# docs/bench/ (then `python3 benches/plot.py` draws the backlog plot from them).
#
#   benches/reproduce.sh              # all but N = 1 000 000 (about 15 minutes)
#   benches/reproduce.sh --million    # and N = 1 000 000 (about an hour more)
#
# Needs the services of the README and rabbitmqctl on the PATH; builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p uidflow-cli
B=target/release/uidflow
out=docs/bench
mkdir -p "$out"

run() { # name, then bench arguments
    local name=$1
    shift
    echo "== $name: uidflow bench $*" >&2
    "$B" bench --separate --json "$@" >"$out/$name.json"
    python3 - "$out/$name.json" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
e = r["latency_ms"]["end_to_end"]
line = f'   {r["applications_per_second"]:.1f}/s, e2e p50 {e["p50"]:.1f} ms p99 {e["p99"]:.1f} ms, uidflow run peak RSS {r["uidflow_process"]["peak_rss_mib"]:.1f} MiB'
if "floor" in r:
    line += f', floor {r["floor"]["applications_per_second"]:.1f}/s, ratio {100 * r["ratio_to_floor"]:.0f} %'
print(line)
EOF
}

rate_of() { # half the throughput of a report
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["applications_per_second"] / 2))' "$1"
}

run block-floor -n 3000 --mix block --floor
run issue-floor -n 600 --mix issue --floor
run block-rate-half -n 4000 --mix block --rate "$(rate_of "$out/block-floor.json")"
run block-0ms-c128 -n 3000 --mix block --concurrency 128
for latency in 50ms 200ms; do
    run "block-$latency" -n 2000 --mix block --latency "$latency"
    run "block-$latency-c128" -n 3000 --mix block --latency "$latency" --concurrency 128
done
for n in 1000 3000 10000 30000 100000; do
    run "block-n$n" -n "$n" --mix block
done
if [[ "${1:-}" == "--million" ]]; then
    run block-n1000000 -n 1000000 --mix block
fi
