# Helpers for lab scenarios (lab/README.md), sourced inside the guest:
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
