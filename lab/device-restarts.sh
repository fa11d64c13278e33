# The body of the block-device scenarios (ublk.sh, nbd-device.sh): `mpath target` in
# namespace tgt (two portals, two paths), `mpath daemon` in the root namespace with one
# block device per map; the device and its stable names, ext4 on /dev/mpath/mpatha, fio
# verify through a path blackhole, then — under the same load — the daemon killed (-9) and
# restarted, restarted as planned, and replaced by another binary: 0 errors, e2fsck clean.
# The caller sets KIND (check-name prefix), MODULE, EXPORT (the [exports] key), DEV_PREFIX
# and EVENTS (the daemon's event names to show).
IQN=iqn.2026-01.io.mpath:$KIND
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
SOCK=$MSTACK_SOCK
mp() { "$MPATH" "$@" --socket "$SOCK"; }

step "modules, namespaces, mpath target"
lab_modules $MODULE nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$P1" --portal "$P2" \
    --lun mem:256M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target's portals" lab_listening tgt "$P2" || fatal "mpath target did not listen"

step "mpath daemon with $EXPORT"
mdaemon_up "$P1" - "nbd = \"off\"
$EXPORT = true"
lab_on_exit "\"$MPATH\" shutdown --socket $SOCK"
dev_of() { mp show maps --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["maps"][0]["device"])'; }
lab_wait 30 "the map's $KIND device" sh -c "\"$MPATH\" show maps --socket $SOCK | grep -q $DEV_PREFIX" ||
    { mp show maps; tail -20 "$LAB_OUT/daemon.log"; fatal "no $KIND device"; }
mp show maps
DEV=$(dev_of)
check $KIND-device "the map's device is $DEV, $(blockdev --getsize64 "$DEV") bytes" \
    test "$(blockdev --getsize64 "$DEV")" = $((256 << 20))
lsblk -o NAME,SIZE,LOG-SEC,PHY-SEC,MIN-IO,OPT-IO,ROTA,DISC-GRAN,DISC-MAX,WSAME "$DEV"
lsblk -o NAME,SIZE,SERIAL,WWN "$DEV"
WWID=$(mp show maps --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["maps"][0]["wwid"])')
ls -l /dev/mpath/ "/dev/disk/by-id/mpath-$WWID"
names_ok() { [ "$(readlink -f /dev/mpath/mpatha)" = "$DEV" ] && [ "$(readlink -f "/dev/disk/by-id/mpath-$WWID")" = "$DEV" ]; }
check $KIND-stable-names "/dev/mpath/mpatha and /dev/disk/by-id/mpath-$WWID lead to $DEV" names_ok
udevadm trigger --action=change "$DEV" && udevadm settle -t 30
check $KIND-names-survive-udev-trigger "after udevadm trigger: $(readlink -f /dev/mpath/mpatha)" names_ok
cat /sys/block/$(basename "$DEV")/queue/write_cache /sys/block/$(basename "$DEV")/queue/fua 2>&1

step "ext4 on /dev/mpath/mpatha, fio verify, path $P1 blackholed and restored"
mkfs.ext4 -q -F /dev/mpath/mpatha || fatal "mkfs.ext4 /dev/mpath/mpatha failed"
mkdir -p /tmp/mnt-$KIND && mount /dev/mpath/mpatha /tmp/mnt-$KIND || fatal "cannot mount /dev/mpath/mpatha"
lab_on_exit "umount /tmp/mnt-$KIND"
fio_verify_start $KIND 30 --filename=/tmp/mnt-$KIND/fio.dat --direct=1 --ioengine=libaio
sleep 8
lab_blackhole on "${P1%:*}"
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
sleep 6
lab_blackhole off "${P1%:*}"
fio_verify_end $KIND
check $KIND-fio-verify-through-failover "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes verified; longest stall ${FIO_STALL_MS} ms" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0

# restart_under_load NAME HOW: fio verifying on the mounted filesystem for 25 s; 8 s in, the
# daemon is replaced — HOW is "kill9" (a crash, restarted at once as a service manager
# would), "restart" (SIGTERM, then the same binary again: systemctl restart) or "upgrade"
# (SIGTERM, then another binary: a copy of this one at another path). 0 errors expected;
# RESULT gives the longest stall.
restart_under_load() {
    local name=$1 how=$2 pid bin=$MPATH
    if [ "$how" = upgrade ]; then
        cp "$MPATH" /tmp/mpath-upgraded
        bin=/tmp/mpath-upgraded
    fi
    fio_verify_start "$name" 25 --filename=/tmp/mnt-$KIND/fio.dat --direct=1 --ioengine=libaio
    sleep 8
    pid=$(pgrep -f 'daemon --config /tmp/mpath.toml')
    case "$how" in
        kill9) ts "kill -9 $pid"; kill -9 "$pid" ;;
        restart) ts "SIGTERM $pid, then start it again"; kill -TERM "$pid" ;;
        upgrade)
            ts "SIGTERM $pid, then start $bin"
            kill -TERM "$pid"
            ;;
    esac
    # Started again the moment the old one is gone, as a service manager does.
    local end=$(($(date +%s) + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.01; done
    kill -0 "$pid" 2>/dev/null && bad "$KIND-$name" "the old daemon did not exit within 30 s"
    ts "old daemon gone"
    lab_daemon "daemon-$name" "$bin" daemon --config /tmp/mpath.toml
    lab_wait 60 "the map's $KIND device again" sh -c "\"$MPATH\" show maps --socket $SOCK 2>/dev/null | grep -q $DEV_PREFIX" ||
        { tail -20 "$LAB_OUT/daemon-$name.log"; fatal "the new daemon did not take the device over"; }
    ts "device taken over"
    mp show events | grep -E "$EVENTS" | tail -2
    fio_verify_end "$name"
    check "$KIND-$name" "$how under fio: exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes verified; longest stall ${FIO_STALL_MS} ms" \
        test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0
    echo "RESULT ${KIND}_${how}_stall_ms=$FIO_STALL_MS"
}

step "the daemon killed (-9) under load and started again"
restart_under_load crash kill9
step "a planned restart under load (SIGTERM, start)"
restart_under_load restart restart
step "an upgrade under load (SIGTERM, start another binary)"
restart_under_load upgrade upgrade
check $KIND-names-after-restarts "/dev/mpath/mpatha still $(readlink -f /dev/mpath/mpatha)" \
    test "$(readlink -f /dev/mpath/mpatha)" = "$DEV"
dmesg | grep -iE "$KIND|I/O error|EXT4-fs (error|warning)" | tail -10
if dmesg | grep -qE "I/O error, dev ${DEV_PREFIX#/dev/}|EXT4-fs error"; then
    bad $KIND-no-kernel-io-errors "the kernel logged I/O or ext4 errors on the $KIND device"
else
    ok $KIND-no-kernel-io-errors "no I/O or ext4 error in the kernel log"
fi

step "unmount, e2fsck"
umount /tmp/mnt-$KIND || bad $KIND-unmount "umount failed"
fsck=$(e2fsck -fn "$DEV" 2>&1)
fsck_rc=$?
echo "$fsck"
check $KIND-e2fsck-clean "e2fsck -fn $DEV exit $fsck_rc" test "$fsck_rc" = 0
lab_finish
