#!/usr/bin/env bash
# bench/bandwidth.sh — bandwidth through rate-limited paths (BENCHMARKS.md, P6). Root only.
#
#   bench/bandwidth.sh                   # 200 Mbit/s per path; 50 and 200 Mbit/s for 1:4
#   RATE=400mbit SLOW=100mbit FAST=400mbit DURATION=15 bench/bandwidth.sh
#
# Two network namespaces (initiator, target) joined by two veth pairs, one per path, in
# 198.18.0.0/15 (with an `unreachable` safety route in the root namespace); each path's
# target-side egress (the direction reads flow) shaped with `tc tbf`. `mpath target` runs in
# the target namespace with a 1 GiB memory LUN, `mpath daemon` in the initiator namespace
# exporting the map on a unix socket, and fio reads through it (1 MiB sequential, QD8 by default).
#
#  1. symmetric: both paths at $RATE; one path (the other failed by `mpath fail path`) then
#     both (service-time): the ratio should be near 2;
#  2. asymmetric 1:4: paths at $SLOW and $FAST; each alone, then both with round-robin,
#     queue-length and service-time: each against the sum of the two alone.
#
# Everything it creates is removed on exit.

set -euo pipefail

RATE=${RATE:-200mbit}
SLOW=${SLOW:-50mbit}
FAST=${FAST:-200mbit}
DURATION=${DURATION:-10}
QD=${QD:-8}

if [ "$(id -u)" != 0 ]; then
    echo "bench/bandwidth.sh needs root (network namespaces, tc)" >&2
    exit 1
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MPATH=${CARGO_TARGET_DIR:-$ROOT/target}/release/mpath
(cd "$ROOT" && cargo build --release -q -p mpath)

NI=mpbw-i-$$
NT=mpbw-t-$$
DIR=$(mktemp -d /tmp/mpath-bw.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NI" 2>/dev/null || true
    ip netns del "$NT" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

ip route add unreachable 198.18.0.0/15 2>/dev/null || true
ip netns add "$NI"
ip netns add "$NT"
ip -n "$NI" link set lo up
ip -n "$NT" link set lo up
for i in 1 2; do
    ip link add "bwi$i-$$" type veth peer name "bwt$i-$$"
    ip link set "bwi$i-$$" netns "$NI"
    ip link set "bwt$i-$$" netns "$NT"
    ip -n "$NI" addr add "198.18.$((100 + i)).1/24" dev "bwi$i-$$"
    ip -n "$NT" addr add "198.18.$((100 + i)).2/24" dev "bwt$i-$$"
    ip -n "$NI" link set "bwi$i-$$" up
    ip -n "$NT" link set "bwt$i-$$" up
done
P1=198.18.101.2:3260
P2=198.18.102.2:3260

shape() { # path rate
    ip netns exec "$NT" tc qdisc replace dev "bwt$1-$$" root tbf rate "$2" burst 256kb latency 100ms
}

ip netns exec "$NT" "$MPATH" --log warn target --iqn iqn.2026-01.io.mpath:bw \
    --portal "$P1" --portal "$P2" --lun mem:1G --control-socket "$DIR/target.sock" \
    2>"$DIR/target.log" &
PIDS+=($!)

DAEMON=
start_daemon() { # selector
    cat >"$DIR/mpath.toml" <<EOF
control_socket = "$DIR/mpath.sock"

[defaults]
selector = "$1"

[[portal]]
address = "$P1"

[[portal]]
address = "$P2"

[exports]
nbd = "off"
nbd_unix = "$DIR/nbd.sock"
EOF
    ip netns exec "$NI" "$MPATH" --log warn daemon --config "$DIR/mpath.toml" 2>>"$DIR/daemon.log" &
    DAEMON=$!
    PIDS+=("$DAEMON")
    for _ in $(seq 100); do
        if "$MPATH" show maps --json --socket "$DIR/mpath.sock" 2>/dev/null |
            grep -q '"active_paths": 2'; then
            return
        fi
        sleep 0.2
    done
    echo "the daemon did not assemble the map with 2 paths:" >&2
    cat "$DIR/daemon.log" >&2
    exit 1
}
stop_daemon() {
    "$MPATH" shutdown --socket "$DIR/mpath.sock" >/dev/null 2>&1 || kill "$DAEMON"
    wait "$DAEMON" 2>/dev/null || true
}

# MB/s (10^6 bytes) of 1 MiB sequential reads through the export.
measure() {
    if ! fio --name=bw --ioengine=nbd --uri="nbd+unix:///mpatha?socket=$DIR/nbd.sock" \
        --rw=read --bs=1M --iodepth="$QD" --runtime="$DURATION" --time_based --size=1G \
        --output-format=json >"$DIR/fio.json" 2>"$DIR/fio.err"; then
        echo "fio failed:" >&2
        cat "$DIR/fio.err" "$DIR/fio.json" >&2
        tail -20 "$DIR/daemon.log" >&2
        exit 1
    fi
    # fio may print notes before its JSON.
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print("%.1f" % (json.loads(t[t.index("{"):])["jobs"][0]["read"]["bw_bytes"]/1e6))' "$DIR/fio.json"
}
one_path() { # the path to keep: 1 or 2
    local other=$P2
    [ "$1" = 2 ] && other=$P1
    "$MPATH" fail path "$other" --socket "$DIR/mpath.sock" >/dev/null
    measure
    "$MPATH" reinstate path "$other" --socket "$DIR/mpath.sock" >/dev/null
}

echo "# bench/bandwidth.sh — $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# 1 MiB sequential reads, QD$QD, ${DURATION} s per run, through NBD (unix socket)"

shape 1 "$RATE"
shape 2 "$RATE"
start_daemon service-time
a=$(one_path 1)
b=$(measure)
echo "symmetric $RATE per path: 1 path $a MB/s, 2 paths (service-time) $b MB/s, ratio $(python3 -c "print('%.3f' % ($b/$a))")"
stop_daemon

shape 1 "$SLOW"
shape 2 "$FAST"
start_daemon service-time
s=$(one_path 1)
f=$(one_path 2)
sum=$(python3 -c "print('%.1f' % ($s+$f))")
echo "asymmetric $SLOW : $FAST: path 1 alone $s MB/s, path 2 alone $f MB/s, sum $sum MB/s"
stop_daemon
for sel in round-robin queue-length service-time; do
    start_daemon "$sel"
    m=$(measure)
    echo "  $sel: $m MB/s, $(python3 -c "print('%.3f' % ($m/$sum))") of the sum"
    stop_daemon
done
