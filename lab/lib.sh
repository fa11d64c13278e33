# Helpers for lab scenarios (docs/lab.md), sourced inside the guest:
#
#   . "$LAB_DIR/lib.sh"
#
# Output conventions, read by lab/run and by crates/mpath/tests/kernel_lab.rs:
#   CHECK ok NAME: detail     a point the scenario proves
#   CHECK FAIL NAME: detail   a point that did not hold (the scenario goes on, and fails)
#   FATAL reason              the scenario cannot go on (exits 1)
#   RESULT key=value ...      figures for BENCHMARKS.md
# The scenario ends with lab_finish, which exits non-zero when any check failed.

set -uo pipefail
: "${LAB_OUT:?lab/lib.sh runs inside the lab guest (lab/run sets LAB_OUT)}"
: "${MPATH:?}"
LAB_FAILS=0
LAB_CHECKS=0
LAB_PIDS=()
# Every TCP/IP address of the lab is in the benchmark range (RFC 2544), on veth pairs
# inside the guest; the guest has no other network.
LAB_NET=198.18

ts() { printf '[%8.2f] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*"; }
step() { ts "== $*"; }
fatal() {
    echo "FATAL $*"
    lab_cleanup
    exit 1
}

# check NAME DETAIL COMMAND...: runs COMMAND; a CHECK line with its outcome.
check() {
    local name=$1 detail=$2
    shift 2
    LAB_CHECKS=$((LAB_CHECKS + 1))
    if "$@"; then
        echo "CHECK ok $name: $detail"
    else
        echo "CHECK FAIL $name: $detail (failed: $*)"
        LAB_FAILS=$((LAB_FAILS + 1))
    fi
}

# ok NAME DETAIL / bad NAME DETAIL: record a point decided by the scenario itself.
ok() { LAB_CHECKS=$((LAB_CHECKS + 1)); echo "CHECK ok $1: $2"; }
bad() {
    LAB_CHECKS=$((LAB_CHECKS + 1))
    LAB_FAILS=$((LAB_FAILS + 1))
    echo "CHECK FAIL $1: $2"
}

lab_finish() {
    lab_cleanup
    ts "end: $LAB_CHECKS checks, $LAB_FAILS failed"
    [ "$LAB_FAILS" = 0 ] && [ "$LAB_CHECKS" -gt 0 ]
    exit $?
}

# Functions a scenario registers to run at the end (or on FATAL), last first.
LAB_CLEANUPS=()
lab_on_exit() { LAB_CLEANUPS+=("$*"); }
lab_cleanup() {
    local i
    for ((i = ${#LAB_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${LAB_CLEANUPS[$i]}" >/dev/null 2>&1 || true
    done
    LAB_CLEANUPS=()
    for p in "${LAB_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    LAB_PIDS=()
}

# Seconds left before lab/run's deadline.
lab_time_left() { echo $((LAB_DEADLINE - $(date +%s))); }

lab_modules() {
    local m
    for m in "$@"; do
        modprobe "$m" 2>&1 || fatal "module $m does not load in $(uname -r)"
    done
}

lab_configfs() {
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config ||
        fatal "cannot mount configfs"
}

# lab_paths ROLE NS N: network namespace NS, joined to the root namespace by N veth pairs,
# one per path. Path i is 198.18.i.0/24; the initiator's end is .1 and the target's .2, as in
# testkit::netns. ROLE says which side NS is: "target" (the kernel initiator, or whatever
# initiates, stays in the root namespace) or "initiator" (a kernel target such as LIO stays
# in the root namespace).
lab_paths() {
    local role=$1 ns=$2 n=$3 i ns_ip root_ip
    case "$role" in
        target) ns_ip=2 root_ip=1 ;;
        initiator) ns_ip=1 root_ip=2 ;;
        *) fatal "lab_paths: role is target or initiator, not $role" ;;
    esac
    ip link set lo up
    ip netns add "$ns" || fatal "cannot create namespace $ns"
    ip -n "$ns" link set lo up
    for ((i = 1; i <= n; i++)); do
        ip link add "r$ns$i" type veth peer name "n$ns$i" netns "$ns" ||
            fatal "cannot create veth pair $i for $ns"
        ip addr add "$LAB_NET.$i.$root_ip/24" dev "r$ns$i"
        ip -n "$ns" addr add "$LAB_NET.$i.$ns_ip/24" dev "n$ns$i"
        ip link set "r$ns$i" up
        ip -n "$ns" link set "n$ns$i" up
    done
    for ((i = 1; i <= n; i++)); do
        ip netns exec "$ns" ping -c 1 -W 5 "$LAB_NET.$i.$root_ip" >/dev/null ||
            fatal "path $i of namespace $ns does not answer ping"
    done
}

# lab_daemon NAME COMMAND...: start COMMAND in its own session (killing it must not take the
# scenario down), output in $LAB_OUT/NAME.log; its pid in LAB_PID_<NAME>.
lab_daemon() {
    local name=$1
    shift
    setsid "$@" > "$LAB_OUT/$name.log" 2>&1 < /dev/null &
    local pid=$!
    LAB_PIDS+=("$pid")
    printf -v "LAB_PID_${name//[^a-zA-Z0-9]/_}" '%s' "$pid"
}

# lab_wait SECS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds; false after SECS.
lab_wait() {
    local secs=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + secs))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then
            echo "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# lab_listening [NS] ADDR:PORT: is something listening there?
lab_listening() {
    local ns=""
    [ $# = 2 ] && { ns=$1; shift; }
    if [ -n "$ns" ]; then
        ip netns exec "$ns" ss -Hltn "( sport = :${1##*:} )" | grep -qF "$1"
    else
        ss -Hltn "( sport = :${1##*:} )" | grep -qF "$1"
    fi
}

# lab_blackhole on|off ADDR [NS]: silently drop every packet to and from ADDR, as seen from the
# initiator's side (in NS, or the root namespace): sockets stay open, nothing arrives.
lab_blackhole() {
    local what=$1 addr=$2 ns=${3:-} nft=(nft)
    [ -n "$ns" ] && nft=(ip netns exec "$ns" nft)
    local table="labhole_${addr//./_}"
    case "$what" in
        on)
            "${nft[@]}" -f - <<EOF || fatal "nft: cannot blackhole $addr"
table inet $table {
    chain in { type filter hook input priority -10; ip saddr $addr drop; }
    chain out { type filter hook output priority -10; ip daddr $addr drop; }
}
EOF
            ;;
        off) "${nft[@]}" delete table inet "$table" || fatal "nft: cannot lift the blackhole of $addr" ;;
    esac
}

# lab_json FILE EXPR: evaluate a Python expression over the JSON in FILE (bound to `j`).
lab_json() {
    /usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# fio's JSON output, minus the lines some engines print before it.
lab_fio_json() {
    sed -n '/^{/,$p' "$1"
}

# dmesg_has TEXT: did the kernel log TEXT?
dmesg_has() { dmesg | grep -qF "$1"; }

# lio_target IQN FILE SIZE PORTAL... : a LIO target (configfs, no targetcli) serving FILE
# (created sparse with SIZE bytes) as LUN 0 through one target portal group per portal. With
# two or more portals each TPG is its own ALUA target port group: the first active/optimized
# (LIO's default group, id 0), the others active/non-optimized (ids 2, 3, ...), implicit and
# explicit ALUA, as an array with one optimized controller.
lio_target() {
    local iqn=$1 file=$2 size=$3 i=0 p
    shift 3
    lab_modules target_core_mod target_core_file iscsi_target_mod
    lab_configfs
    local c=/sys/kernel/config/target
    local so=$c/core/fileio_0/lab
    truncate -s "$size" "$file" || fatal "cannot create $file"
    mkdir -p "$so" || fatal "LIO: cannot create the fileio backstore"
    echo "fd_dev_name=$file,fd_dev_size=$size" > "$so/control" || fatal "LIO: backstore control"
    # A unit serial gives the LU its NAA identifier (VPD 0x83), as targetcli sets one.
    cat /proc/sys/kernel/random/uuid > "$so/wwn/vpd_unit_serial"
    echo 1 > "$so/attrib/emulate_write_cache"
    echo 1 > "$so/enable" || fatal "LIO: cannot enable the backstore"
    echo 3 > "$so/alua/default_tg_pt_gp/alua_access_type"
    for p in "$@"; do
        i=$((i + 1))
        local tpg=$c/iscsi/$iqn/tpgt_$i
        mkdir -p "$tpg/lun/lun_0" || fatal "LIO: cannot create TPG $i"
        ln -s "$so" "$tpg/lun/lun_0/lab" || fatal "LIO: cannot map the LUN in TPG $i"
        mkdir "$tpg/np/$p" || fatal "LIO: cannot create portal $p"
        echo 0 > "$tpg/attrib/authentication"
        echo 1 > "$tpg/attrib/generate_node_acls"
        echo 1 > "$tpg/attrib/cache_dynamic_acls"
        echo 0 > "$tpg/attrib/demo_mode_write_protect"
        if [ "$i" -gt 1 ]; then
            local gp=$so/alua/tpg$i
            mkdir "$gp" || fatal "LIO: cannot create ALUA group tpg$i"
            echo "$i" > "$gp/tg_pt_gp_id"
            echo 3 > "$gp/alua_access_type"
            echo 1 > "$gp/alua_access_state"
            echo "tpg$i" > "$tpg/lun/lun_0/alua_tg_pt_gp" || fatal "LIO: cannot put TPG $i in its ALUA group"
        fi
        echo 1 > "$tpg/enable" || fatal "LIO: cannot enable TPG $i"
    done
    lab_on_exit "lio_teardown $iqn"
}

lio_teardown() {
    local c=/sys/kernel/config/target t
    for t in "$c"/iscsi/"$1"/tpgt_*; do
        echo 0 > "$t/enable"
        rm -f "$t"/lun/lun_0/lab
        rmdir "$t"/lun/lun_0 "$t"/np/* "$t"
    done
    rmdir "$c/iscsi/$1" "$c"/core/fileio_0/lab/alua/tpg* "$c"/core/fileio_0/lab "$c"/core/fileio_0
}

# --- The two host stacks, for the side-by-side benchmarks -------------------------------

# kstack_up IQN PORTAL...: the Linux stack with Debian's defaults — iscsid, multipathd without
# multipath.conf, a SendTargets discovery on the first portal, a login on each PORTAL given
# (only those), the LU's WWID added as an operator does under find_multipaths "strict". Sets
# KSTACK_DEV to the dm device once it has one path per portal.
kstack_up() {
    local iqn=$1 p n=0 disk
    shift
    lab_modules iscsi_tcp dm_multipath dm_service_time dm_round_robin scsi_dh_alua
    test ! -e /etc/multipath.conf || fatal "/etc/multipath.conf exists; the kernel stack runs on defaults"
    pgrep -x iscsid >/dev/null || lab_daemon iscsid iscsid -f
    pgrep -x multipathd >/dev/null || lab_daemon multipathd multipathd -d -s -v2
    sleep 1
    timeout 60 iscsiadm -m discovery -t sendtargets -p "$1" >/dev/null 2>&1 ||
        fatal "iscsiadm: discovery through $1 failed"
    for p in "$@"; do
        timeout 60 iscsiadm -m node -T "$iqn" -p "$p" --login >/dev/null 2>&1 ||
            fatal "iscsiadm: login to $iqn through $p failed"
        n=$((n + 1))
    done
    udevadm settle -t 30
    disk=$(lsblk -dno NAME,TRAN | awk '$2 == "iscsi" {print $1; exit}')
    [ -n "$disk" ] || fatal "no iSCSI disk appeared"
    multipath -a "/dev/$disk" >/dev/null 2>&1
    multipathd reconfigure >/dev/null 2>&1
    lab_wait 60 "a dm-multipath map with $n paths" kstack_paths_active "$n" ||
        fatal "multipathd did not build a map with $n active paths: $(multipath -ll 2>&1)"
    KSTACK_DEV=/dev/$(multipathd show maps raw format "%d" | head -1)
    [ -b "$KSTACK_DEV" ] || fatal "no dm device for the map"
}

kstack_paths_active() {
    [ "$(multipathd show paths raw format '%t' 2>/dev/null | grep -c active)" = "$1" ]
}

kstack_down() {
    multipathd disablequeueing maps >/dev/null 2>&1
    multipath -F >/dev/null 2>&1
    iscsiadm -m node --logout >/dev/null 2>&1
    iscsiadm -m node -o delete >/dev/null 2>&1
    multipath -W >/dev/null 2>&1
}

# mdaemon_up PORTAL NS EXPORTS: `mpath daemon` logged in through PORTAL (its discovery finds
# the others) — in namespace NS, or the root namespace for "-" — with EXPORTS as its
# [exports] table (TOML lines). Waits until its one map has MSTACK_PATHS active paths
# (default 2); sets MSTACK_MAP. Its control socket is $MSTACK_SOCK, its log
# $LAB_OUT/daemon.log.
MSTACK_SOCK=/tmp/mpath.sock
mdaemon_up() {
    local portal=$1 ns=$2 exports=$3 want=${MSTACK_PATHS:-2} run=()
    [ "$ns" = - ] || run=(ip netns exec "$ns")
    cat > /tmp/mpath.toml <<EOT
control_socket = "$MSTACK_SOCK"

[defaults]
bindings_file = "/tmp/mpath-bindings"

[[portal]]
address = "$portal"

[exports]
$exports
EOT
    lab_daemon daemon "${run[@]}" "$MPATH" daemon --config /tmp/mpath.toml
    lab_wait 90 "the daemon's map with $want active paths" mstack_paths_active "$want" ||
        fatal "the mpath map did not assemble: $(tail -5 "$LAB_OUT/daemon.log")"
    MSTACK_MAP=$("$MPATH" show maps --json --socket "$MSTACK_SOCK" |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["maps"][0]["name"])')
}

# mstack_up PORTAL: mpath's host stack — the daemon (root namespace) with its map exported
# over NBD on 127.0.0.1:10809, and the kernel's NBD client (netlink) attached to it. Sets
# MSTACK_DEV=/dev/nbd0.
# With MSTACK_UBLK=1 the map also gets its ublk device: MSTACK_UBLK_DEV=/dev/ublkbN; with
# MSTACK_NBDDEV=1 the NBD device the daemon attaches itself: MSTACK_NBDDEV_DEV=/dev/nbdN (and
# nbd-client takes another); with MSTACK_FUSE=1 its FUSE file behind a loop device (direct
# I/O): MSTACK_LOOP_DEV=/dev/loopN.
mstack_up() {
    lab_modules nbd
    local exports='nbd = "127.0.0.1:10809"'
    if [ "${MSTACK_FUSE:-0}" = 1 ]; then
        lab_modules loop fuse
        exports="$exports
fuse = \"/tmp/mpath-fuse\""
    fi
    if [ "${MSTACK_UBLK:-0}" = 1 ]; then
        lab_modules ublk_drv
        exports="$exports
ublk = true"
    fi
    if [ "${MSTACK_NBDDEV:-0}" = 1 ]; then
        exports="$exports
nbd_device = true"
    fi
    mdaemon_up "$1" - "$exports"
    MSTACK_DEV=/dev/nbd0
    if [ "${MSTACK_NBDDEV:-0}" = 1 ]; then
        lab_wait 30 "the map's NBD device" sh -c "\"$MPATH\" show maps --socket $MSTACK_SOCK | grep -q /dev/nbd" ||
            fatal "no NBD device for $MSTACK_MAP: $("$MPATH" show maps --socket "$MSTACK_SOCK")"
        MSTACK_NBDDEV_DEV=$(mstack_device /dev/nbd)
        [ "$MSTACK_NBDDEV_DEV" = /dev/nbd0 ] && MSTACK_DEV=/dev/nbd1
    fi
    timeout 60 nbd-client -N "$MSTACK_MAP" 127.0.0.1 10809 "$MSTACK_DEV" >/dev/null 2>&1 ||
        fatal "nbd-client could not attach $MSTACK_DEV to map $MSTACK_MAP"
    if [ "${MSTACK_UBLK:-0}" = 1 ]; then
        lab_wait 30 "the map's ublk device" sh -c "\"$MPATH\" show maps --socket $MSTACK_SOCK | grep -q /dev/ublkb" ||
            fatal "no ublk device for $MSTACK_MAP: $("$MPATH" show maps --socket "$MSTACK_SOCK")"
        MSTACK_UBLK_DEV=$(mstack_device /dev/ublkb)
    fi
    if [ "${MSTACK_FUSE:-0}" = 1 ]; then
        MSTACK_LOOP_DEV=$(losetup --find --show --direct-io=on "/tmp/mpath-fuse/$MSTACK_MAP") ||
            fatal "losetup on the FUSE file failed"
    fi
}

mstack_paths_active() {
    [ "$("$MPATH" show maps --json --socket "$MSTACK_SOCK" 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin)["maps"]; print(m[0]["active_paths"] if m else 0)')" = "$1" ]
}

# mstack_device PREFIX: the first map's device whose path starts with PREFIX.
mstack_device() {
    "$MPATH" show maps --json --socket "$MSTACK_SOCK" | /usr/bin/python3 -c '
import json, sys
devs = json.load(sys.stdin)["maps"][0]["device"].split(",")
print(next((d for d in devs if d.startswith(sys.argv[1])), ""))' "$1"
}

mstack_down() {
    [ -n "${MSTACK_LOOP_DEV:-}" ] && losetup -d "$MSTACK_LOOP_DEV" >/dev/null 2>&1
    MSTACK_LOOP_DEV=
    nbd-client -d "${MSTACK_DEV:-/dev/nbd0}" >/dev/null 2>&1
    "$MPATH" shutdown --socket "$MSTACK_SOCK" >/dev/null 2>&1
    # '[d]aemon': the pattern must not match the command line of the shell that runs pgrep.
    lab_wait 20 "the daemon to stop" sh -c "! pgrep -f '[d]aemon --config /tmp/mpath.toml' >/dev/null"
    # The daemon leaves its own NBD device to a next daemon; this stack is gone for good.
    if [ -n "${MSTACK_NBDDEV_DEV:-}" ]; then
        nbd-client -d "$MSTACK_NBDDEV_DEV" >/dev/null 2>&1
        MSTACK_NBDDEV_DEV=
    fi
}

# busiest_portal [NS] ADDR...: the address that carried the most packets over one second, by
# nft counters in the initiator's namespace — the path the stack's I/O is on now.
busiest_portal() {
    local nft=(nft) a
    case "$1" in *.*) ;; *) nft=(ip netns exec "$1" nft); shift ;; esac
    "${nft[@]}" -f - <<EOT
table inet labcount {
    chain in {
        type filter hook input priority -20;
$(for a in "$@"; do echo "        ip saddr $a counter"; done)
    }
}
EOT
    sleep 1
    "${nft[@]}" list table inet labcount | awk '/ip saddr/ {print $6, $3}' | sort -rn | head -1 | cut -d' ' -f2
    "${nft[@]}" delete table inet labcount
}

# lat_stats LOG: "max_ms ios" of a fio latency log (--log_avg_msec=0: one line per I/O,
# latency in ns in the second field).
lat_stats() {
    /usr/bin/python3 - "$1" <<'PY'
import sys
m = n = 0
for line in open(sys.argv[1]):
    f = line.split(",")
    if len(f) > 1:
        n += 1
        m = max(m, int(f[1]))
print("%.1f %d" % (m / 1e6, n))
PY
}

# tgtd_target NS IQN FILE SIZE PORTAL...: tgtd (foreground, in namespace NS, or the root
# namespace when NS is "-") serving FILE (sparse, SIZE bytes) as LUN 1 on the portals.
tgtd_target() {
    local ns=$1 iqn=$2 file=$3 size=$4 p portals="" i
    shift 4
    for p in "$@"; do portals="${portals:+$portals,}portal=$p"; done
    truncate -s "$size" "$file" || fatal "cannot create $file"
    if [ "$ns" = - ]; then
        lab_daemon tgtd tgtd -f --iscsi "$portals"
    else
        lab_daemon tgtd ip netns exec "$ns" tgtd -f --iscsi "$portals"
    fi
    for i in $(seq 1 50); do
        tgtadm --lld iscsi --mode target --op new --tid 1 --targetname "$iqn" >/dev/null 2>&1 && break
        sleep 0.2
    done
    tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$file" ||
        fatal "tgtadm: cannot add LUN 1"
    tgtadm --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL ||
        fatal "tgtadm: cannot bind"
}

tgtd_stop() {
    tgtadm --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1
    tgtadm --op delete --mode system >/dev/null 2>&1
    sleep 1
    pkill -x tgtd
}

# fio_rate DEV RW BS DEPTH SECS [NAME]: run fio and print "iops MBps" (reads).
fio_rate() {
    local dev=$1 rw=$2 bs=$3 depth=$4 secs=$5 name=${6:-rate}
    fio --name="$name" --filename="$dev" --rw="$rw" --bs="$bs" --direct=1 --ioengine=libaio \
        --iodepth="$depth" --runtime="$secs" --time_based --output-format=json \
        > "$LAB_OUT/$name.json" 2>&1 || { echo "0 0"; return 1; }
    lab_json <(lab_fio_json "$LAB_OUT/$name.json") \
        '"%.0f %.1f" % (j["jobs"][0]["read"]["iops"], j["jobs"][0]["read"]["bw_bytes"] / 1e6)'
}

# cpu_busy_s: seconds of CPU time (all CPUs, everything but idle and iowait) since boot.
cpu_busy_s() {
    awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat
}

# fio_verify_start NAME SECS FIO-TARGET-ARGS...: fio writes 4 KiB blocks at random (QD16) and
# reads each back to check its crc32c as it goes (verify_backlog), for SECS, in the
# background, logging every I/O's latency. FIO-TARGET-ARGS say where (--filename=... or
# --ioengine=nbd --uri=...).
fio_verify_start() {
    local name=$1 secs=$2
    shift 2
    fio --name=verify "$@" --rw=randwrite --bs=4k --size=64M --iodepth=16 \
        --verify=crc32c --verify_backlog=512 --verify_fatal=1 --runtime="$secs" --time_based \
        --output-format=json --write_lat_log="$LAB_OUT/$name" --log_avg_msec=0 \
        --log_unix_epoch=1 --log_entries=1048576 \
        > "$LAB_OUT/$name.json" 2> "$LAB_OUT/$name.err" &
    FIO_PID=$!
}

# fio_verify_end NAME: wait for it; sets FIO_RC, FIO_ERROR (fio's error number), FIO_WRITES,
# FIO_VERIFIED (blocks read back and checked) and FIO_STALL_MS (the longest time without a
# completion).
fio_verify_end() {
    local name=$1 fj
    wait "$FIO_PID"
    FIO_RC=$?
    cat "$LAB_OUT/$name.err"
    fj=$(lab_fio_json "$LAB_OUT/$name.json")
    FIO_ERROR=$(lab_json <(echo "$fj") 'j["jobs"][0]["error"]' 2>&1)
    FIO_WRITES=$(lab_json <(echo "$fj") 'j["jobs"][0]["write"]["total_ios"]' 2>&1)
    FIO_VERIFIED=$(lab_json <(echo "$fj") 'j["jobs"][0]["read"]["total_ios"]' 2>&1)
    FIO_STALL_MS=$(/usr/bin/python3 - "$LAB_OUT/${name}_lat.1.log" <<'PY'
import sys
ts = sorted(int(l.split(",")[0]) for l in open(sys.argv[1]))
print(max((b - a for a, b in zip(ts, ts[1:])), default=0))
PY
)
}
