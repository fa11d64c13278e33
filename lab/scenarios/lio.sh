# mpath's initiator and daemon against the kernel's own target: LIO, configured through
# configfs, serving one fileio LUN through two portals, each its own target portal group and
# ALUA group (optimized and non-optimized). mpath runs in namespace `ini`, one veth path per
# portal. `mpath iscsi io --verify` on one portal; then the daemon assembles the map, fio
# writes and verifies through its NBD export, and the optimized portal is blackholed and
# restored under that load.
. "$LAB_DIR/lib.sh"

IQN=iqn.2003-01.org.linux-iscsi.lab:lio
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
SOCK=$MSTACK_SOCK
NBD=/tmp/mpath-nbd.sock
mp() { "$MPATH" "$@" --socket "$SOCK"; }

step "modules, namespaces, LIO"
lab_modules nf_tables
lab_paths initiator ini 2
lio_target "$IQN" /tmp/lio.img $((256 << 20)) "$P1" "$P2"
lab_wait 30 "LIO's portals" lab_listening "$P2" || fatal "LIO does not listen on $P2"
find /sys/kernel/config/target/iscsi -maxdepth 4 -name 'np' -exec ls {} \;

step "mpath iscsi against LIO"
ini() { ip netns exec ini "$@"; }
disc=$(ini timeout 60 "$MPATH" iscsi discover "$P1" 2>&1)
echo "$disc"
lists_both() { grep -q "$P1" <<<"$disc" && grep -q "$P2" <<<"$disc"; }
check lio-discovery "mpath iscsi discover $P1 lists both portals" lists_both
ini timeout 60 "$MPATH" iscsi probe "$P1" --target "$IQN" 2>&1
io=$(ini timeout 120 "$MPATH" iscsi io "$P2" --target "$IQN" --lun 0 --verify --size 32M 2>&1)
io_rc=$?
echo "$io"
check lio-iscsi-io-verify "mpath iscsi io --verify on LIO LUN 0 through $P2 (exit $io_rc)" test "$io_rc" = 0

step "mpath daemon against LIO"
mdaemon_up "$P1" ini "nbd = \"off\"
nbd_unix = \"$NBD\""
lab_on_exit "\"$MPATH\" shutdown --socket $SOCK"
mp show topology 2>&1 | tee "$LAB_OUT/topology.txt"
mp show paths --json > "$LAB_OUT/paths.json"
prios=$(lab_json "$LAB_OUT/paths.json" '" ".join("%s=%d" % (p["path"], p["priority"]) for p in sorted(j["paths"], key=lambda p: p["path"]))')
check lio-map-assembles "one map, two active paths, ALUA priorities $prios" \
    test "$prios" = "$P1/0=50 $P2/0=10"

step "fio verify through the daemon's NBD export, $P1 blackholed then restored"
fio_verify_start lio 40 --ioengine=nbd --uri="nbd+unix:///$MSTACK_MAP?socket=$NBD"
sleep 8
ts "blackhole $P1"
lab_blackhole on "${P1%:*}" ini
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
mp show paths 2>&1
sleep 10
ts "restore $P1"
lab_blackhole off "${P1%:*}" ini
fio_verify_end lio
check lio-failover-under-verify "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes, $FIO_VERIFIED verified reads" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0
echo "RESULT lio_failover_stall_ms=$FIO_STALL_MS"
mp show events 2>&1 | grep -E "path-failed|path-reinstated|queue" | tail -8
lab_wait 30 "$P1 reinstated" mstack_paths_active 2
check lio-path-reinstated "$P1 back in the map after the blackhole" mstack_paths_active 2

lab_finish
