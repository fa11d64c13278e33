# The kernel's NBD client on mpath's export: `mpath target` in namespace `tgt` (two portals,
# two veth paths), `mpath daemon` in the root namespace exporting its map over NBD, and
# `nbd-client` (netlink) attaching /dev/nbd0 to it. ext4 on /dev/nbd0, fio writes and
# verifies a file on it while one path is blackholed and restored, then e2fsck. The daemon
# also mounts its FUSE directory: udev, with mpath's rules, names a loop device over the
# map's file /dev/mpath/<map> and /dev/disk/by-id/mpath-<wwid>.
. "$LAB_DIR/lib.sh"

IQN=iqn.2026-01.io.mpath:knbd
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
SOCK=$MSTACK_SOCK
mp() { "$MPATH" "$@" --socket "$SOCK"; }

step "modules, namespaces, mpath target"
lab_modules nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$P1" --portal "$P2" \
    --lun mem:256M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target's portals" lab_listening tgt "$P2" || fatal "mpath target did not listen"

step "mpath daemon, NBD export on 127.0.0.1:10809; nbd-client (netlink) attaches /dev/nbd0; a loop device over the FUSE file"
"$MPATH" udev rules >/etc/udev/rules.d/69-mpath-loop.rules && udevadm control --reload ||
    fatal "cannot install mpath's udev rules"
MSTACK_FUSE=1 mstack_up "$P1"
lab_on_exit "mstack_down"
mp show topology 2>&1
size=$(blockdev --getsize64 /dev/nbd0 2>/dev/null)
check nbd-attached "/dev/nbd0 is $size bytes, the map's size" test "$size" = $((256 << 20))
# Over netlink the kernel owns the connection and nbd-client exits once it is set up; the
# old ioctl interface keeps an nbd-client process blocked in NBD_DO_IT.
if pgrep -x nbd-client >/dev/null; then
    bad nbd-netlink "an nbd-client process stayed: the ioctl interface, not netlink"
else
    ok nbd-netlink "nbd-client set up /dev/nbd0 over netlink and exited"
fi

step "udev names $MSTACK_LOOP_DEV, the loop device over /tmp/mpath-fuse/$MSTACK_MAP"
udevadm settle -t 30
WWID=$(mp show maps --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["maps"][0]["wwid"])')
"$MPATH" udev loop "$MSTACK_LOOP_DEV"
loop_names() {
    [ "$(readlink -f "/dev/mpath/$MSTACK_MAP")" = "$1" ] && [ "$(readlink -f "/dev/disk/by-id/mpath-$WWID")" = "$1" ]
}
ls -l /dev/mpath/ "/dev/disk/by-id/mpath-$WWID" 2>&1
check loop-stable-names "/dev/mpath/$MSTACK_MAP and /dev/disk/by-id/mpath-$WWID lead to $MSTACK_LOOP_DEV" loop_names "$MSTACK_LOOP_DEV"
udevadm trigger --action=change "$MSTACK_LOOP_DEV" && udevadm settle -t 30
check loop-names-survive-udev-trigger "after udevadm trigger: $(readlink -f "/dev/mpath/$MSTACK_MAP")" loop_names "$MSTACK_LOOP_DEV"
losetup -d "$MSTACK_LOOP_DEV" && MSTACK_LOOP_DEV= && udevadm settle -t 30
check loop-names-removed-on-detach "after losetup -d: $(ls /dev/mpath/ 2>&1 | tr '\n' ' ')" \
    test ! -e "/dev/mpath/$MSTACK_MAP" -a ! -e "/dev/disk/by-id/mpath-$WWID"

step "ext4 on /dev/nbd0, fio verify on a file, path $P1 blackholed and restored"
mkfs.ext4 -q -F /dev/nbd0 || fatal "mkfs.ext4 /dev/nbd0 failed"
mkdir -p /tmp/mnt-nbd && mount /dev/nbd0 /tmp/mnt-nbd || fatal "cannot mount /dev/nbd0"
lab_on_exit "umount /tmp/mnt-nbd"
fio_verify_start nbd 40 --filename=/tmp/mnt-nbd/fio.dat --direct=1 --ioengine=libaio
sleep 10
ts "blackhole $P1"
lab_blackhole on "${P1%:*}"
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
mp show paths 2>&1
sleep 10
ts "restore $P1"
lab_blackhole off "${P1%:*}"
fio_verify_end nbd
check nbd-ext4-fio-verify-through-failover "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes verified as they went" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0
dmesg | grep -iE "nbd0|I/O error|EXT4-fs (error|warning)" | tail -5
if dmesg | grep -qE "I/O error, dev nbd0|EXT4-fs error"; then
    bad nbd-no-kernel-io-errors "the kernel logged I/O or ext4 errors on nbd0"
else
    ok nbd-no-kernel-io-errors "no I/O or ext4 error on nbd0 in the kernel log"
fi
echo "RESULT nbd_failover_stall_ms=$FIO_STALL_MS"
mp show events 2>&1 | grep -E "path-failed|path-reinstated" | tail -4

step "unmount, e2fsck"
umount /tmp/mnt-nbd || bad nbd-unmount "umount /tmp/mnt-nbd failed"
fsck=$(e2fsck -fn /dev/nbd0 2>&1)
fsck_rc=$?
echo "$fsck"
check nbd-e2fsck-clean "e2fsck -fn /dev/nbd0 exit $fsck_rc" test "$fsck_rc" = 0
lab_finish
