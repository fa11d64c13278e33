#!/usr/bin/env bash
# bench/initiator.sh — mpath's initiator vs libiscsi's, measured in one run against the same
# targets: tgtd (the seed's target) and mpath target.
#
#   bench/initiator.sh                   # 3 rounds of 10 s per pairing
#   ROUNDS=5 DURATION=20 bench/initiator.sh
#
# For each target, alternating in every round: `mpath iscsi perf --bs 4K --depth 32` and
# `iscsi-perf -m 32 -b 8 -r` (4 KiB random read, QD32), each for $DURATION seconds. Prints
# every run, the medians and the median of the per-round ratios mpath/libiscsi.
# tgtd's LUN is a 1 GiB file on a real filesystem, read into the page cache first; mpath
# target serves mem:1G. Everything started here is stopped on exit.
#
# Environment: ROUNDS (3), DURATION (10), BENCH_DIR (default /var/tmp/mpath-bench),
# BENCH_NET (127.0.72), TGT_CTL (tgtd -C, default 72).

set -euo pipefail
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
BENCH_NET=${BENCH_NET:-127.0.72}
TGT_CTL=${TGT_CTL:-72}
BENCH_DIR=${BENCH_DIR:-/var/tmp/mpath-bench}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MPATH=${CARGO_TARGET_DIR:-$ROOT/target}/release/mpath
TGT_ADDR=$BENCH_NET.1:3260
MP_ADDR=$BENCH_NET.2:3260
TGT_IQN=iqn.2024-01.io.mpath.bench:init-tgtd
MP_IQN=iqn.2026-01.io.mpath:bench-init

MP_PID=
cleanup() {
  set +e
  [ -n "$MP_PID" ] && kill -INT "$MP_PID" 2>/dev/null && wait "$MP_PID" 2>/dev/null
  tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1
  tgtadm -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1
  sleep 0.5
  pkill -KILL -f "tgtd -f -C $TGT_CTL " 2>/dev/null
  rm -f "$BENCH_DIR/init-tgtd.img"
}
trap cleanup EXIT

for c in tgtd tgtadm iscsi-perf; do command -v $c >/dev/null || { echo "missing $c (see .ci/run)"; exit 2; }; done
(cd "$ROOT" && cargo build --release -q -p mpath)
mkdir -p "$BENCH_DIR"
IMG=$BENCH_DIR/init-tgtd.img
dd if=/dev/urandom of="$IMG" bs=1M count=1024 status=none
cat "$IMG" > /dev/null

tgtd -f -C "$TGT_CTL" --iscsi portal=$TGT_ADDR >/dev/null 2>&1 &
for i in $(seq 50); do tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op new --tid 1 --targetname $TGT_IQN 2>/dev/null && break; sleep 0.1; done
tgtadm -C "$TGT_CTL" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$IMG"
tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
"$MPATH" target --iqn $MP_IQN --portal $MP_ADDR --lun mem:1G --control-socket "$BENCH_DIR/init.sock" >/dev/null 2>&1 &
MP_PID=$!
sleep 1

mpath_run() { "$MPATH" iscsi perf "$1" --target "$2" --lun 1 --bs 4K --depth 32 --seconds "$DURATION" --json | awk -F'[:,]' '/"iops"/{printf "%d\n", $2}'; }
libiscsi_run() { timeout $((DURATION + 10)) iscsi-perf -m 32 -b 8 -r -t "$DURATION" "iscsi://$1/$2/1" 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2}'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tools: $(dpkg-query -W -f='libiscsi-bin ${Version}, ' libiscsi-bin) $(dpkg-query -W -f='tgt ${Version}' tgt)"
for target in tgtd mpath; do
  if [ $target = tgtd ]; then addr=$TGT_ADDR; iqn=$TGT_IQN; else addr=$MP_ADDR; iqn=$MP_IQN; fi
  M=(); L=(); R=()
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then m=$(mpath_run $addr $iqn); l=$(libiscsi_run $addr $iqn)
    else l=$(libiscsi_run $addr $iqn); m=$(mpath_run $addr $iqn); fi
    M+=("$m"); L+=("$l"); R+=("$(awk -v a="$m" -v b="$l" 'BEGIN{printf "%.2f", a/b}')")
    echo "target $target round $r: mpath initiator $m IOPS, libiscsi iscsi-perf $l IOPS, ratio ${R[-1]}"
  done
  echo "target $target median: mpath $(printf '%s\n' "${M[@]}" | median), libiscsi $(printf '%s\n' "${L[@]}" | median), ratio $(printf '%s\n' "${R[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
