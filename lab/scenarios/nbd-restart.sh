# What the kernel NBD client does when mpath's daemon restarts under load: nbd-client in
# netlink mode (its default) and in ioctl mode with -persist, each attached to the daemon's
# export with fio verifying on the device; 8 s in, the daemon gets SIGTERM and is started
# again at once. Reports what fio saw (RESULT lines); checks nothing yet.
. "$LAB_DIR/lib.sh"

IQN=iqn.2026-01.io.mpath:nbdr
P1=$LAB_NET.1.2:3260
lab_modules nbd nf_tables
lab_paths target tgt 2
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" --portal "$P1" --portal "$LAB_NET.2.2:3260" \
    --lun mem:256M --control-socket /tmp/mpath-target.sock
lab_wait 60 "the target" lab_listening tgt "$P1" || fatal "mpath target did not listen"
mdaemon_up "$P1" - 'nbd = "127.0.0.1:10809"'

for mode in netlink persist; do
    step "nbd-client, $mode"
    case $mode in
        netlink) timeout 30 nbd-client -N "$MSTACK_MAP" 127.0.0.1 10809 /dev/nbd0 -t 30 ;;
        persist) timeout 30 nbd-client -N "$MSTACK_MAP" 127.0.0.1 10809 /dev/nbd0 -t 30 -nonetlink -persist ;;
    esac
    fio_verify_start "nbd-$mode" 25 --filename=/dev/nbd0 --direct=1 --ioengine=libaio
    sleep 8
    pid=$(pgrep -f 'daemon --config /tmp/mpath.toml')
    ts "SIGTERM $pid"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    lab_daemon "daemon-$mode" "$MPATH" daemon --config /tmp/mpath.toml
    fio_verify_end "nbd-$mode"
    echo "RESULT nbd_restart mode=$mode fio_rc=$FIO_RC error=$FIO_ERROR writes=$FIO_WRITES stall_ms=$FIO_STALL_MS"
    dmesg | grep -i nbd | tail -5
    nbd-client -d /dev/nbd0
    sleep 1
done
ok nbd-restart-explored "see RESULT lines"
lab_finish
