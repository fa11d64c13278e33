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
SOCK=/tmp/mpath.sock
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
cat > /tmp/mpath.toml <<EOF
control_socket = "$SOCK"

[defaults]
bindings_file = "/tmp/mpath-bindings"

[[portal]]
address = "$P1"

[exports]
nbd = "off"
nbd_unix = "$NBD"
EOF
lab_daemon daemon ip netns exec ini "$MPATH" daemon --config /tmp/mpath.toml
lab_on_exit "\"$MPATH\" shutdown --socket $SOCK"
active() { [ "$(mp show maps --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin)["maps"]; print(m[0]["active_paths"] if len(m) == 1 else -1)')" = "$1" ]; }
lab_wait 90 "a map with two active paths" active 2 || { tail -20 "$LAB_OUT/daemon.log"; fatal "the map did not assemble"; }
mp show topology 2>&1 | tee "$LAB_OUT/topology.txt"
mp show paths --json > "$LAB_OUT/paths.json"
prios=$(lab_json "$LAB_OUT/paths.json" '" ".join("%s=%d" % (p["path"], p["priority"]) for p in sorted(j["paths"], key=lambda p: p["path"]))')
check lio-map-assembles "one map, two active paths, ALUA priorities $prios" \
    test "$prios" = "$P1/0=50 $P2/0=10"

step "fio verify through the daemon's NBD export, $P1 blackholed then restored"
fio --name=verify --ioengine=nbd --uri="nbd+unix:///mpatha?socket=$NBD" --rw=randwrite --bs=4k \
    --size=64M --iodepth=16 --verify=crc32c --verify_backlog=512 --verify_fatal=1 \
    --runtime=40 --time_based --output-format=json \
    --write_lat_log="$LAB_OUT/lio" --log_avg_msec=0 --log_unix_epoch=1 --log_entries=1048576 \
    > "$LAB_OUT/fio.json" 2> "$LAB_OUT/fio.err" &
fio_pid=$!
sleep 8
ts "blackhole $P1"
lab_blackhole on "${P1%:*}" ini
lab_wait 20 "the daemon to fail $P1" sh -c "\"$MPATH\" show paths --socket $SOCK | grep '$P1' | grep -q failed"
mp show paths 2>&1
sleep 10
ts "restore $P1"
lab_blackhole off "${P1%:*}" ini
wait $fio_pid
fio_rc=$?
cat "$LAB_OUT/fio.err"
fj=$(lab_fio_json "$LAB_OUT/fio.json")
errs=$(lab_json <(echo "$fj") 'j["jobs"][0]["error"]' 2>&1)
ios=$(lab_json <(echo "$fj") 'j["jobs"][0]["write"]["total_ios"]' 2>&1)
verified=$(lab_json <(echo "$fj") 'j["jobs"][0]["read"]["total_ios"]' 2>&1)
check lio-failover-under-verify "fio exit $fio_rc, error $errs, $ios writes, $verified verified reads" \
    test "$fio_rc" = 0 -a "$errs" = 0
stall=$(/usr/bin/python3 - "$LAB_OUT"/lio_lat.1.log <<'PY'
import sys
ts = sorted(int(l.split(",")[0]) for l in open(sys.argv[1]))
print(max(b - a for a, b in zip(ts, ts[1:])))
PY
)
echo "RESULT lio_failover_stall_ms=$stall"
mp show events 2>&1 | grep -E "path-failed|path-reinstated|queue" | tail -8
lab_wait 30 "$P1 reinstated" active 2
check lio-path-reinstated "$P1 back in the map after the blackhole" active 2

lab_finish
