# Benchmark K3 (BENCHMARKS.md "The Linux stack side by side"): `mpath target` against LIO and
# tgtd under the same kernel initiator (open-iscsi, iscsi_tcp), same VM.
#
#   lab/run bench-targets [ROUNDS] [SECS]     (default 3 rounds of 10 s per target)
#
# Every target serves a 256 MiB file in the guest's tmpfs (filled with random data) as a
# disk, on loopback in the root namespace: LIO (configfs, fileio) on 127.0.0.1, mpath target
# (file:) on 127.0.0.2, tgtd (rdwr) on 127.0.0.3; and, to show what the file costs, mpath
# target with a memory LU (filled first) on 127.0.0.4. One session each; fio 4 KiB random read
# QD32 on each /dev/sdX directly (no dm), one target at a time, rounds interleaved. CPU time
# per I/O is the guest's busy time (user + system + irq + softirq, all CPUs, from
# /proc/stat) over the run divided by the I/Os: it counts initiator and target alike, which is
# the only fair way when one target (LIO) runs in the kernel.
. "$LAB_DIR/lib.sh"

ROUNDS=${1:-3}
SECS=${2:-10}
SIZE=$((256 << 20))

lab_modules iscsi_tcp
ip link set lo up
for f in lio mpath tgtd; do
    dd if=/dev/urandom of=/tmp/k3-$f.img bs=1M count=$((SIZE >> 20)) status=none
done

step "targets"
lio_target iqn.2003-01.org.linux-iscsi.lab:k3 /tmp/k3-lio.img "$SIZE" 127.0.0.1:3260
lab_daemon target "$MPATH" target --iqn iqn.2026-01.io.mpath:k3 --portal 127.0.0.2:3260 \
    --lun file:/tmp/k3-mpath.img --control-socket /tmp/mpath-target.sock
tgtd_target - iqn.2026-01.io.mpath:k3tgt /tmp/k3-tgtd.img "$SIZE" 127.0.0.3:3260
lab_daemon target-mem "$MPATH" target --iqn iqn.2026-01.io.mpath:k3mem --portal 127.0.0.4:3260 \
    --lun mem:$((SIZE >> 20))M --control-socket /tmp/mpath-target-mem.sock
for a in 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4; do
    lab_wait 60 "a target on $a" lab_listening "$a:3260" || fatal "no target on $a:3260"
done

step "kernel initiator: one session per target"
lab_daemon iscsid iscsid -f
sleep 1
"$MPATH" iscsi io 127.0.0.4:3260 --target iqn.2026-01.io.mpath:k3mem --verify \
    --size $((SIZE >> 20))M >/dev/null 2>&1 || fatal "cannot fill the memory LU"
for a in 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4; do
    timeout 60 iscsiadm -m discovery -t sendtargets -p "$a:3260" >/dev/null || fatal "discovery on $a"
    timeout 60 iscsiadm -m node -p "$a:3260" --login >/dev/null || fatal "login on $a"
done
udevadm settle -t 30
declare -A DEV
for s in /sys/class/iscsi_session/session*; do
    tn=$(cat "$s/targetname")
    d=$(basename "$(ls -d "$s"/device/target*/*/block/* 2>/dev/null | head -1)")
    case "$tn" in
        *linux-iscsi*) DEV[lio]=/dev/$d ;;
        *:k3tgt) DEV[tgtd]=/dev/$d ;;
        *:k3) DEV[mpath]=/dev/$d ;;
        *:k3mem) DEV[mpath-mem]=/dev/$d ;;
    esac
done
echo "devices: lio=${DEV[lio]:-} mpath=${DEV[mpath]:-} tgtd=${DEV[tgtd]:-} mpath-mem=${DEV[mpath-mem]:-}"
for t in lio mpath tgtd mpath-mem; do [ -b "${DEV[$t]:-}" ] || fatal "no disk for $t"; done

step "4 KiB random read QD32, $ROUNDS rounds of ${SECS}s"
for r in $(seq 1 "$ROUNDS"); do
    for t in lio mpath tgtd mpath-mem; do
        c0=$(cpu_busy_s)
        rate=$(fio_rate "${DEV[$t]}" randread 4k 32 "$SECS" "k3-$t-$r")
        c1=$(cpu_busy_s)
        iops=${rate% *}
        us=$(awk -v a="$c0" -v b="$c1" -v i="$iops" -v s="$SECS" 'BEGIN { printf "%.1f", (b - a) * 1e6 / (i * s) }')
        echo "RESULT k3 target=$t round=$r iops=$iops cpu_us_per_io=$us"
    done
done
iscsiadm -m node --logout >/dev/null 2>&1
tgtd_stop
ok k3-done "$ROUNDS rounds"
lab_finish
