# Benchmark K2 (BENCHMARKS.md "The Linux stack side by side"): steady throughput through each
# stack's block device, same VM, same target, one path.
#
#   lab/run bench-steady [ROUNDS] [SECS]     (default 3 rounds of 10 s per figure)
#
# Targets, one after the other, each in namespace tgt with ONE portal (so both stacks use
# one path and only the stacks differ): `mpath target` (memory LU) and tgtd (sparse file in
# the guest's tmpfs). Stacks, both logged in at once, measured in turn within each round:
#   kernel: open-iscsi + dm-multipath (Debian defaults) -> /dev/dm-N
#   mpath:  mpath daemon, NBD export, kernel NBD client  -> /dev/nbd0
#           the same map's ublk device                   -> /dev/ublkbN
#           the NBD device the daemon attaches itself    -> /dev/nbdN
#           the same map's FUSE file, loop device (dio)  -> /dev/loopN
# Figures: 4 KiB random read QD32 IOPS, 1 MiB sequential read QD8 MB/s.
. "$LAB_DIR/lib.sh"

ROUNDS=${1:-3}
SECS=${2:-10}
A1=$LAB_NET.1.2
export MSTACK_PATHS=1
# mpath's map gets both block devices: /dev/nbd0 (kernel NBD) and its ublk device.
export MSTACK_UBLK=1 MSTACK_NBDDEV=1 MSTACK_FUSE=1

lab_modules nf_tables
lab_paths target tgt 1

measure() {
    local target=$1 r kr mr ur nr lr
    for r in $(seq 1 "$ROUNDS"); do
        for w in "randread 4k 32" "read 1M 8"; do
            set -- $w
            kr=$(fio_rate "$KSTACK_DEV" "$1" "$2" "$3" "$SECS" "k2-$target-kernel-$1-$r")
            mr=$(fio_rate "$MSTACK_DEV" "$1" "$2" "$3" "$SECS" "k2-$target-mpath-$1-$r")
            ur=$(fio_rate "$MSTACK_UBLK_DEV" "$1" "$2" "$3" "$SECS" "k2-$target-ublk-$1-$r")
            nr=$(fio_rate "$MSTACK_NBDDEV_DEV" "$1" "$2" "$3" "$SECS" "k2-$target-nbddev-$1-$r")
            lr=$(fio_rate "$MSTACK_LOOP_DEV" "$1" "$2" "$3" "$SECS" "k2-$target-fuse-$1-$r")
            echo "RESULT k2 target=$target rw=$1 bs=$2 qd=$3 round=$r kernel_iops=${kr% *} kernel_MBps=${kr#* } mpath_iops=${mr% *} mpath_MBps=${mr#* } ublk_iops=${ur% *} ublk_MBps=${ur#* } nbddev_iops=${nr% *} nbddev_MBps=${nr#* } fuse_iops=${lr% *} fuse_MBps=${lr#* }"
        done
    done
}

step "target 1: mpath target"
IQN=iqn.2026-01.io.mpath:k2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$A1:3260" \
    --lun mem:512M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target" lab_listening tgt "$A1:3260" || fatal "mpath target did not start"
# Fill the LU so reads are of written data (a memory LU reads holes as zeroes for free).
"$MPATH" iscsi io "$A1:3260" --target "$IQN" --verify --size 512M >/dev/null 2>&1 ||
    fatal "cannot fill the LU"
kstack_up "$IQN" "$A1:3260"
mstack_up "$A1:3260"
measure mpath-target
mstack_down
kstack_down
kill "$LAB_PID_target"
sleep 1

step "target 2: tgtd"
IQN=iqn.2026-01.io.mpath:k2tgt
tgtd_target tgt "$IQN" /tmp/k2-tgtd.img 512M "$A1:3260"
lab_wait 30 "tgtd" lab_listening tgt "$A1:3260" || fatal "tgtd did not start"
dd if=/dev/urandom of=/tmp/k2-tgtd.img bs=1M count=512 conv=notrunc status=none
kstack_up "$IQN" "$A1:3260"
mstack_up "$A1:3260"
measure tgtd
mstack_down
kstack_down
tgtd_stop

ok k2-done "$ROUNDS rounds"
lab_finish
