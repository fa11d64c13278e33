# The kernel's NBD client on mpath's export: `mpath target` in namespace `tgt` (two portals,
# two veth paths), `mpath daemon` in the root namespace exporting its map over NBD, and
# `nbd-client` (netlink) attaching /dev/nbd0 to it. ext4 on /dev/nbd0, fio writes and
# verifies a file on it while one path is blackholed and restored, then e2fsck.
. "$LAB_DIR/lib.sh"

IQN=iqn.2026-01.io.mpath:knbd
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
SOCK=/tmp/mpath.sock
mp() { "$MPATH" "$@" --socket "$SOCK"; }

step "modules, namespaces, mpath target"
lab_modules nbd nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$P1" --portal "$P2" \
    --lun mem:256M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target's portals" lab_listening tgt "$P2" || fatal "mpath target did not listen"

step "mpath daemon, NBD export on 127.0.0.1:10809"
cat > /tmp/mpath.toml <<EOF
control_socket = "$SOCK"

[defaults]
bindings_file = "/tmp/mpath-bindings"

[[portal]]
address = "$P1"

[exports]
nbd = "127.0.0.1:10809"
EOF
lab_daemon daemon "$MPATH" daemon --config /tmp/mpath.toml
lab_on_exit "\"$MPATH\" shutdown --socket $SOCK"
active() { [ "$(mp show maps --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin)["maps"]; print(m[0]["active_paths"] if len(m) == 1 else -1)')" = "$1" ]; }
lab_wait 90 "a map with two active paths" active 2 || { tail -20 "$LAB_OUT/daemon.log"; fatal "the map did not assemble"; }
mp show topology 2>&1

step "nbd-client (netlink) attaches /dev/nbd0"
timeout 60 nbd-client -N mpatha 127.0.0.1 10809 /dev/nbd0 2>&1
lab_on_exit "nbd-client -d /dev/nbd0"
size=$(blockdev --getsize64 /dev/nbd0 2>/dev/null)
check nbd-attached "/dev/nbd0 is $size bytes, the map's size" test "$size" = $((256 << 20))
# Over netlink the kernel owns the connection and nbd-client exits once it is set up; the
# old ioctl interface keeps an nbd-client process blocked in NBD_DO_IT.
if pgrep -x nbd-client >/dev/null; then
    bad nbd-netlink "an nbd-client process stayed: the ioctl interface, not netlink"
else
    ok nbd-netlink "nbd-client set up /dev/nbd0 over netlink and exited"
fi

step "ext4 on /dev/nbd0, fio verify on a file, path $P1 blackholed and restored"
mkfs.ext4 -q -F /dev/nbd0 || fatal "mkfs.ext4 /dev/nbd0 failed"
mkdir -p /tmp/mnt-nbd && mount /dev/nbd0 /tmp/mnt-nbd || fatal "cannot mount /dev/nbd0"
lab_on_exit "umount /tmp/mnt-nbd"
fio --name=verify --filename=/tmp/mnt-nbd/fio.dat --size=64M --rw=randwrite --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=16 --verify=crc32c --verify_backlog=512 --verify_fatal=1 \
    --runtime=40 --time_based --output-format=json \
    --write_lat_log="$LAB_OUT/nbd" --log_avg_msec=0 --log_unix_epoch=1 --log_entries=1048576 \
    > "$LAB_OUT/fio.json" 2> "$LAB_OUT/fio.err" &
fio_pid=$!
sleep 10
ts "blackhole $P1"
lab_blackhole on "${P1%:*}"
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
mp show paths 2>&1
sleep 10
ts "restore $P1"
lab_blackhole off "${P1%:*}"
wait $fio_pid
fio_rc=$?
cat "$LAB_OUT/fio.err"
fj=$(lab_fio_json "$LAB_OUT/fio.json")
errs=$(lab_json <(echo "$fj") 'j["jobs"][0]["error"]' 2>&1)
ios=$(lab_json <(echo "$fj") 'j["jobs"][0]["write"]["total_ios"]' 2>&1)
check nbd-ext4-fio-verify-through-failover "fio exit $fio_rc, error $errs, $ios writes verified as they went" \
    test "$fio_rc" = 0 -a "$errs" = 0
dmesg | grep -iE "nbd0|I/O error|EXT4-fs (error|warning)" | tail -5
if dmesg | grep -qE "I/O error, dev nbd0|EXT4-fs error"; then
    bad nbd-no-kernel-io-errors "the kernel logged I/O or ext4 errors on nbd0"
else
    ok nbd-no-kernel-io-errors "no I/O or ext4 error on nbd0 in the kernel log"
fi
stall=$(/usr/bin/python3 - "$LAB_OUT"/nbd_lat.1.log <<'PY'
import sys
ts = sorted(int(l.split(",")[0]) for l in open(sys.argv[1]))
print(max(b - a for a, b in zip(ts, ts[1:])))
PY
)
echo "RESULT nbd_failover_stall_ms=$stall"
mp show events 2>&1 | grep -E "path-failed|path-reinstated" | tail -4

step "unmount, e2fsck"
umount /tmp/mnt-nbd || bad nbd-unmount "umount /tmp/mnt-nbd failed"
fsck=$(e2fsck -fn /dev/nbd0 2>&1)
fsck_rc=$?
echo "$fsck"
check nbd-e2fsck-clean "e2fsck -fn /dev/nbd0 exit $fsck_rc" test "$fsck_rc" = 0
nbd-client -d /dev/nbd0 2>&1

lab_finish
