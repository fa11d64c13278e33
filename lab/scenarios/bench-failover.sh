# Benchmark K1 (BENCHMARKS.md "The Linux stack side by side"): the worst I/O latency when the
# path carrying I/O is silently blackholed, the Linux stack with Debian's defaults against
# mpath, same VM, same target, same fault.
#
#   lab/run bench-failover [TRIALS]      (default 3 trials per stack)
#
# Target: `mpath target` in namespace tgt, two portals, ALUA group 1 active/optimized and
# group 2 active/non-optimized, so each stack sends I/O down one path and fails over to the
# other. Load: fio 4 KiB random reads, QD16, direct, on the stack's block device, with a
# per-I/O latency log. Each trial: 4 s of load, the busiest portal found by packet counters
# and blackholed (nft drop both ways on the initiator's side), held HOLD seconds, restored;
# the figure is the longest single I/O latency. Between trials both paths are back.
#   kernel: open-iscsi + dm-multipath + multipathd, no multipath.conf -> /dev/dm-0
#   mpath:  mpath daemon, its NBD export, the kernel NBD client -> /dev/nbd0
. "$LAB_DIR/lib.sh"

TRIALS=${1:-3}
IQN=iqn.2026-01.io.mpath:k1
A1=$LAB_NET.1.2
A2=$LAB_NET.2.2

lab_modules nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" \
    --portal "$A1:3260" --portal "$A2:3260@active-non-optimized" --lun mem:512M \
    --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target" lab_listening tgt "$A2:3260" || fatal "mpath target did not start"

# trial STACK DEV HOLD N WAIT_CMD...: one blackhole under load; prints RESULT.
trial() {
    local stack=$1 dev=$2 hold=$3 n=$4 victim stats
    shift 4
    fio --name=k1 --filename="$dev" --rw=randread --bs=4k --direct=1 --ioengine=libaio \
        --iodepth=16 --runtime=$((hold + 9)) --time_based --size=512M --output-format=json \
        --write_lat_log="$LAB_OUT/k1-$stack-$n" --log_avg_msec=0 --log_unix_epoch=1 \
        --log_entries=1048576 > "$LAB_OUT/k1-$stack-$n.json" 2>&1 &
    local fio_pid=$!
    sleep 3
    victim=$(busiest_portal "$A1" "$A2")
    ts "$stack trial $n: blackhole $victim (the busiest path) for ${hold}s"
    lab_blackhole on "$victim"
    sleep "$hold"
    lab_blackhole off "$victim"
    wait $fio_pid || bad "k1-$stack-fio" "fio failed in trial $n: $(tail -3 "$LAB_OUT/k1-$stack-$n.json")"
    stats=$(lat_stats "$LAB_OUT/k1-$stack-${n}_lat.1.log")
    echo "RESULT k1 stack=$stack trial=$n victim=$victim max_lat_ms=${stats% *} ios=${stats#* }"
    lab_wait 120 "both $stack paths back" "$@" || fatal "$stack: a path did not come back after trial $n"
}

step "kernel stack: open-iscsi + dm-multipath, Debian defaults"
kstack_up "$IQN" "$A1:3260" "$A2:3260"
multipath -ll
for n in $(seq 1 "$TRIALS"); do trial kernel "$KSTACK_DEV" 20 "$n" kstack_paths_active 2; done
kstack_down

step "mpath: daemon + NBD export + kernel NBD client"
mstack_up "$A1:3260"
"$MPATH" show topology --socket "$MSTACK_SOCK"
for n in $(seq 1 "$TRIALS"); do trial mpath "$MSTACK_DEV" 8 "$n" mstack_paths_active 2; done
"$MPATH" show events --socket "$MSTACK_SOCK" | grep -E "path-failed|reinstated" | tail -6
mstack_down

ok k1-done "$TRIALS trials per stack"
lab_finish
