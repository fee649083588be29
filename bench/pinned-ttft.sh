#!/usr/bin/env bash
# Added TTFT where the gateway has a core of its own (issue #20's last target).
#
# The gateway (or nginx, the comparator), the simulator and the load generator each run
# on their own CPUs (taskset, through `python -m bench --pin`), so a new request never
# waits for a core the client or the model server holds. 100 paced streams, paired: each
# run sends N streams and the probes through the middle and N straight to the simulator,
# interleaved, and reports +TTFT p50 at N beside nginx's, medians of 5 repeats.
#
# Usage: bench/pinned-ttft.sh [extra python -m bench arguments]
# Needs 8 or more logical CPUs (the 2-vCPU development box cannot run it meaningfully);
# results go to bench/out/pinned/RESULTS.md, never over bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cpus=$(nproc)
if [ "$cpus" -lt 8 ]; then
    echo "pinned-ttft: $cpus CPUs here; it needs 8 or more (one for the middle, two each" >&2
    echo "for the simulator and the load generator, the rest for the system)" >&2
    exit 2
fi
# CPU 0 and 1 stay with the system; the middle gets one CPU alone (the gateway is one
# process on one thread; nginx runs one worker), the harness two each.
quarter=$((cpus / 4))
middle=$((quarter))
sim="$((2 * quarter))-$((2 * quarter + 1))"
lg="$((3 * quarter))-$((3 * quarter + 1))"
python=${PYTHON:-.venv/bin/python}
exec "$python" -m bench --pin "middle=$middle,sim=$sim,lg=$lg" \
    --paced 100 --unpaced "" --short 0 --burst 0 --repeat 5 --paired \
    --paths direct,nginx,gateway --out bench/out/pinned "$@"
