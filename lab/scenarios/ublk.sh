# mpath's ublk export: `mpath target` in namespace tgt (two portals, two paths), `mpath daemon
# --ublk` in the root namespace; /dev/ublkbN for the map, ext4 on it, fio verify through a
# path blackhole, then the daemon killed (-9) and restarted under the same load.
. "$LAB_DIR/lib.sh"

IQN=iqn.2026-01.io.mpath:ublk
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
SOCK=$MSTACK_SOCK
mp() { "$MPATH" "$@" --socket "$SOCK"; }

step "modules, namespaces, mpath target"
lab_modules ublk_drv nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$P1" --portal "$P2" \
    --lun mem:256M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target's portals" lab_listening tgt "$P2" || fatal "mpath target did not listen"

step "mpath daemon with ublk"
mdaemon_up "$P1" - 'nbd = "off"
ublk = true'
lab_on_exit "\"$MPATH\" shutdown --socket $SOCK"
dev_of() { mp show maps --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["maps"][0]["device"])'; }
lab_wait 30 "the map's ublk device" sh -c "\"$MPATH\" show maps --socket $SOCK | grep -q /dev/ublkb" ||
    { mp show maps; tail -20 "$LAB_OUT/daemon.log"; fatal "no ublk device"; }
mp show maps
DEV=$(dev_of)
check ublk-device "the map's device is $DEV, $(blockdev --getsize64 "$DEV") bytes" \
    test "$(blockdev --getsize64 "$DEV")" = $((256 << 20))
lsblk -o NAME,SIZE,LOG-SEC,PHY-SEC,MIN-IO,OPT-IO,ROTA,DISC-GRAN,DISC-MAX,WSAME "$DEV"
cat /sys/block/$(basename "$DEV")/queue/write_cache /sys/block/$(basename "$DEV")/queue/fua 2>&1

step "ext4 on $DEV, fio verify, path $P1 blackholed and restored"
mkfs.ext4 -q -F "$DEV" || fatal "mkfs.ext4 $DEV failed"
mkdir -p /tmp/mnt-ublk && mount "$DEV" /tmp/mnt-ublk || fatal "cannot mount $DEV"
lab_on_exit "umount /tmp/mnt-ublk"
fio_verify_start ublk 30 --filename=/tmp/mnt-ublk/fio.dat --direct=1 --ioengine=libaio
sleep 8
lab_blackhole on "${P1%:*}"
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
sleep 6
lab_blackhole off "${P1%:*}"
fio_verify_end ublk
check ublk-fio-verify-through-failover "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes verified; longest stall ${FIO_STALL_MS} ms" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0

step "kill -9 the daemon under load, start it again"
fio_verify_start crash 40 --filename=/tmp/mnt-ublk/fio.dat --direct=1 --ioengine=libaio
sleep 8
pid=$(pgrep -f 'daemon --config /tmp/mpath.toml')
ts "kill -9 $pid"
kill -9 "$pid"
# As a service manager restarts a crashed daemon: at once.
lab_wait 10 "the old daemon gone" sh -c "! kill -0 $pid 2>/dev/null"
lab_daemon daemon2 "$MPATH" daemon --config /tmp/mpath.toml
lab_wait 60 "the map's ublk device again" sh -c "\"$MPATH\" show maps --socket $SOCK 2>/dev/null | grep -q /dev/ublkb" ||
    { tail -20 "$LAB_OUT/daemon2.log"; fatal "the restarted daemon did not take the device over"; }
mp show maps
mp show events | grep -E "ublk|map-created" | tail -4
fio_verify_end crash
check ublk-kill9-restart "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes verified; longest stall ${FIO_STALL_MS} ms" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0
echo "RESULT ublk_kill9_stall_ms=$FIO_STALL_MS"
dmesg | grep -iE "ublk|I/O error|EXT4-fs (error|warning)" | tail -10

step "unmount, e2fsck"
umount /tmp/mnt-ublk || bad ublk-unmount "umount failed"
fsck=$(e2fsck -fn "$DEV" 2>&1)
fsck_rc=$?
echo "$fsck"
check ublk-e2fsck-clean "e2fsck -fn $DEV exit $fsck_rc" test "$fsck_rc" = 0
lab_finish
