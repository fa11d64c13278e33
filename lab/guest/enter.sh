#!/bin/bash
# The first thing the lab guest runs (lab/run passes it to vng --exec): reads the settings
# lab/run left in the shared output directory, runs the scenario with the time that is left,
# and writes its exit status and the kernel log back. Runs as root inside the guest.
out=$1
. "$out/env" || { echo "lab guest: cannot read $out/env"; exit 125; }
cut -d' ' -f1 /proc/uptime > "$out/started"
left=$((LAB_DEADLINE - $(date +%s)))
[ "$left" -gt 10 ] || left=10
echo "lab guest: $(uname -r), up $(cut -d' ' -f1 /proc/uptime)s, ${left}s left for $(basename "$LAB_SCENARIO")"
export LAB_DIR LAB_OUT MPATH LAB_DEADLINE
export HOME=/tmp/lab-home PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$HOME"
cd /tmp || exit 125
# The scenario starts its daemons with setsid (lab_daemon): killing one must not take the
# scenario down with it.
timeout -k 5 "$left" bash "$LAB_SCENARIO" "${LAB_ARGS[@]}" > "$out/scenario.log" 2>&1 < /dev/null
rc=$?
dmesg > "$out/dmesg.log" 2>&1
echo "$rc" > "$out/status"
sync
echo "lab guest: scenario exit $rc"
exit "$rc"
