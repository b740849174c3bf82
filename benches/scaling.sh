#!/usr/bin/env bash
# Nexmark worker-thread scaling on a many-core machine: Weir and the
# hand-written differential ceiling at 1, 2, 4, 8 and 16 worker threads.
#
#   benches/scaling.sh BIN_DIR OUT_DIR [EVENTS] [SECONDS]
#
# With PINNED=1 it first runs the 2-core targets on two of the machine's
# cores (`taskset -c 0,1`, which the server and the bench inherit): Nexmark
# PINNED_QUERIES (default q0,q1,q2,q4,q5,q7) at 10 M events and 2 workers
# with the ceiling, then the single-session updates benchmark.
#
# BIN_DIR holds release `weir` and `weir-bench` (gzipped or not), built
# elsewhere; OUT_DIR gets each sweep's JSON and log. The first sweep
# (q0 pass-through, q4 join + reductions, q7 window maximum + join) runs
# at every worker count; a second (q1, q2, q3, q8) at 1, 4 and 16 with
# whatever is left of SECONDS (default 540). SWEEP_A and SWEEP_B name
# other queries.
set -u
bin=$1
out=$2
events=${3:-5000000}
budget=${4:-540}
here=$(cd "$(dirname "$0")" && pwd)
started=$(date +%s)
mkdir -p "$out" /tmp/weir-bin
for f in weir weir-bench; do
    if [ -f "$bin/$f.gz" ]; then gzip -dc "$bin/$f.gz" >/tmp/weir-bin/$f; else cp "$bin/$f" /tmp/weir-bin/$f; fi
    chmod +x /tmp/weir-bin/$f
done
# The bench reads its queries from, and writes results to, a copy of benches/.
rm -rf /tmp/weir-benches && mkdir -p /tmp/weir-benches/results
cp -r "$here/nexmark" /tmp/weir-benches/
export WEIR_BIN=/tmp/weir-bin/weir WEIR_BENCH_DIR=/tmp/weir-benches
{ nproc; grep -m1 'model name' /proc/cpuinfo; free -g | head -2; } >"$out/machine.txt"
cat "$out/machine.txt"
sweep() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" /tmp/weir-bin/weir-bench nexmark --events "$events" "$@" --ceiling 2>&1 | tee "$out/$name.log"
    cp /tmp/weir-benches/results/*.json "$out/" 2>/dev/null
}
left() { echo $((budget - ($(date +%s) - started))); }
if [ "${PINNED:-0}" = 1 ]; then
    timeout $(( $(left) - 60 )) taskset -c 0,1 /tmp/weir-bin/weir-bench nexmark --events 10000000 \
        --queries "${PINNED_QUERIES:-q0,q1,q2,q4,q5,q7}" --workers 2 --ceiling 2>&1 | tee "$out/pinned.log"
    timeout $(( $(left) - 30 )) taskset -c 0,1 /tmp/weir-bin/weir-bench updates --workers 2 2>&1 | tee "$out/pinned-updates.log"
    cp /tmp/weir-benches/results/*.json "$out/" 2>/dev/null
fi
sweep scaling-a $(( $(left) - 20 )) --queries "${SWEEP_A:-q0,q4,q7}" --workers 1,2,4,8,16
[ "$(left)" -gt 60 ] && sweep scaling-b $(( $(left) - 10 )) --queries "${SWEEP_B:-q1,q2,q3,q8}" --workers 1,4,16
ls -la "$out"
