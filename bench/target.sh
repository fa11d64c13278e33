#!/usr/bin/env bash
# bench/target.sh — mpath target vs tgtd, measured in one run with one initiator.
#
#   bench/target.sh                      # 3 rounds of 10 s per target, 256 idle sessions
#   ROUNDS=5 DURATION=20 bench/target.sh
#
# What it does (see BENCHMARKS.md, "Target: mpath vs tgtd"):
#  1. builds `mpath` and the `iscsi-sessions` helper (release), once;
#  2. makes two 1 GiB LUN images of random data on a real filesystem (not tmpfs: mpath serves
#     page-cache reads inline with preadv2(RWF_NOWAIT), which tmpfs refuses with EOPNOTSUPP, so
#     on /dev/shm every read would take the thread-pool path) and reads both into the page cache;
#  3. resident memory: VmRSS of a fresh `mpath target --lun mem:256M` and of tgtd (file LUN)
#     before and with $SESSIONS idle sessions logged in (each proven in full feature phase by a
#     TEST UNIT READY);
#  4. throughput: `iscsi-perf -m 32 -b 8 -r -t $DURATION` (4 KiB random read, QD32) against
#     tgtd (file LUN), mpath (the other file) and mpath (mem:1G), alternating, $ROUNDS rounds,
#     the order rotated each round; prints every run, the medians and the median of the
#     per-round ratios mpath/tgtd.
# Everything it starts is stopped on exit (tgtd through tgtadm, then SIGKILL if needed).
#
# Environment: ROUNDS (3), DURATION (10 s), WARMUP (3 s, 0 = none), SESSIONS (256),
# BENCH_DIR (a directory on a real filesystem for the 2 GiB of images; default under /var/tmp),
# BENCH_NET (127.0.71: the loopback /24 prefix whose .1-.4 it listens on), TGT_CTL (tgtd -C),
# KEEP=1 keeps the images.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
SESSIONS=${SESSIONS:-256}
BENCH_NET=${BENCH_NET:-127.0.71}
KEEP=${KEEP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MPATH=$TARGET_DIR/release/mpath
SESSIONS_BIN=$TARGET_DIR/release/iscsi-sessions

TGT_ADDR=$BENCH_NET.1:3260       # tgtd, file LUN
MPF_ADDR=$BENCH_NET.2:3260       # mpath, file LUN
MPM_ADDR=$BENCH_NET.3:3260       # mpath, mem:1G
RSS_ADDR=$BENCH_NET.4:3260       # mpath, mem:256M, for the memory figure only
TGT_IQN=iqn.2024-01.io.mpath.bench:tgtd
MP_IQN=iqn.2026-01.io.mpath:bench

# ---- cleanup: everything started here, by pid ------------------------------------------------
PIDS=()          # mpath targets and iscsi-sessions: SIGINT, then SIGKILL
TGTD_PID=
TGT_CTL=${TGT_CTL:-}
WORK=

stop_pid() { # pid: SIGINT, up to 5 s, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -INT "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$TGTD_PID" ] && kill -0 "$TGTD_PID" 2>/dev/null; then
    # SIGTERM does not stop tgtd while targets exist (PEERS.md).
    tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
    tgtadm -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1 || true
    for i in $(seq 50); do kill -0 "$TGTD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$TGTD_PID" 2>/dev/null && kill -KILL "$TGTD_PID" 2>/dev/null
    wait "$TGTD_PID" 2>/dev/null || true
  fi
  # tgtd leaves its management socket behind even when it exits cleanly.
  if [ -n "$TGTD_PID" ]; then
    rm -f "/var/run/tgtd/socket.$TGT_CTL" "/var/run/tgtd/socket.$TGT_CTL.lock"
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "target.sh: $*" >&2; exit 1; }

# ---- checks and build --------------------------------------------------------------------------
for c in tgtd tgtadm iscsi-perf timeout awk fincore; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install tgt libiscsi-bin util-linux)"
done
for a in "$TGT_ADDR" "$MPF_ADDR" "$MPM_ADDR" "$RSS_ADDR"; do
  if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then die "$a is already in use"; fi
done
if [ -z "$TGT_CTL" ]; then
  TGT_CTL=$((2000 + $$ % 5000))
  while [ -e "/var/run/tgtd/socket.$TGT_CTL" ]; do TGT_CTL=$((TGT_CTL + 1)); done
fi

echo "building (cargo build --release -p mpath; -p testkit --bin iscsi-sessions)" >&2
(cd "$ROOT" && cargo build --release -q -p mpath && cargo build --release -q -p testkit --bin iscsi-sessions)

if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"; WORK=$(mktemp -d "$BENCH_DIR/mpath-bench.XXXXXX")
else
  WORK=$(mktemp -d /var/tmp/mpath-bench.XXXXXX)
fi
FSTYPE=$(df --output=fstype "$WORK" | tail -1)
case $FSTYPE in tmpfs|ramfs) die "$WORK is on $FSTYPE: give BENCH_DIR on a disk filesystem (mpath's inline reads need RWF_NOWAIT)";; esac

# ---- LUN images: random data, read once into the page cache ---------------------------------------
echo "writing two 1 GiB images of random data in $WORK ($FSTYPE)" >&2
head -c 1G /dev/urandom > "$WORK/tgtd.img"
head -c 1G /dev/urandom > "$WORK/mpath.img"
cat "$WORK/tgtd.img" "$WORK/mpath.img" > /dev/null
CACHED=$(fincore -n -b -o RES "$WORK/tgtd.img" "$WORK/mpath.img" | awk '{s+=$1} END {printf "%.0f", s/2^20}')

# ---- start the targets --------------------------------------------------------------------------
STARTED= # pid of the last start_mpath
start_mpath() { # name addr lun-spec
  local name=$1 addr=$2 lun=$3 i pid
  "$MPATH" target --iqn "$MP_IQN" --portal "$addr" --lun "$lun" --log warn \
    --control-socket "$WORK/$name.sock" 2>"$WORK/$name.log" </dev/null >/dev/null &
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 200); do
    grep -q '^control socket' "$WORK/$name.log" 2>/dev/null && { STARTED=$pid; return; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2; die "mpath target ($name) did not start"
}

tgtadm_() { tgtadm -C "$TGT_CTL" --lld iscsi "$@"; }
start_tgtd() {
  local i
  tgtd -f -C "$TGT_CTL" --iscsi "portal=$TGT_ADDR" >"$WORK/tgtd.log" 2>&1 </dev/null &
  TGTD_PID=$!
  for i in $(seq 100); do
    tgtadm_ --mode target --op new --tid 1 --targetname "$TGT_IQN" >/dev/null 2>&1 && break
    kill -0 "$TGTD_PID" 2>/dev/null || { cat "$WORK/tgtd.log" >&2; die "tgtd exited"; }
    [ "$i" = 100 ] && die "tgtd did not come up"
    sleep 0.1
  done
  tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$WORK/tgtd.img"
  tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL
}

start_tgtd
start_mpath mpath-file "$MPF_ADDR" "file:$WORK/mpath.img"; MPF_PID=$STARTED
start_mpath mpath-mem "$MPM_ADDR" mem:1G; MPM_PID=$STARTED
start_mpath mpath-rss "$RSS_ADDR" mem:256M; RSS_PID=$STARTED

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, all threads

# ---- resident memory with $SESSIONS idle sessions -----------------------------------------------
# sessions_rss name target-pid portal iqn count-command...
sessions_rss() {
  local name=$1 pid=$2 portal=$3 iqn=$4; shift 4
  local before with seen spid i
  sleep 1
  before=$(rss_kib "$pid")
  "$SESSIONS_BIN" -n "$SESSIONS" --tur --lun 1 "$portal" "$iqn" >"$WORK/sessions-$name.out" 2>&1 &
  spid=$!
  PIDS+=("$spid")
  for i in $(seq 300); do
    grep -q 'sessions up' "$WORK/sessions-$name.out" && break
    kill -0 "$spid" 2>/dev/null || { cat "$WORK/sessions-$name.out" >&2; die "iscsi-sessions against $name failed"; }
    sleep 0.1
  done
  grep -q 'sessions up' "$WORK/sessions-$name.out" || die "iscsi-sessions against $name: no sessions after 30 s"
  sleep 2
  with=$(rss_kib "$pid")
  seen=$("$@")
  stop_pid "$spid"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(mib "$before")" "$(mib "$with")" \
    "$(awk -v a="$before" -v b="$with" -v n="$SESSIONS" 'BEGIN {printf "%.1f", (b-a)/n}')" \
    "$seen" "$(grep -h 'TEST UNIT READY' "$WORK/sessions-$name.out" | sed 's/^TEST UNIT READY on //')"
}
mpath_sessions() { "$MPATH" target ctl --socket "$WORK/mpath-rss.sock" sessions | tail -n +2 | grep -vc discovery; }
tgtd_sessions() { tgtadm_ --mode target --op show | grep -c 'I_T nexus:'; }

# ---- report header -----------------------------------------------------------------------------
echo "## bench/target.sh — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo) RAM, kernel $(uname -r)"
echo "- mpath $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty'), $(rustc --version | cut -d' ' -f1-2); $(tgtd --version 2>&1 | head -1 | sed 's/^/tgtd /'); libiscsi-bin $(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null || echo '?') (iscsi-perf)"
echo "- images: $WORK ($FSTYPE), 2 x 1 GiB random, ${CACHED} MiB of them in the page cache"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "### Resident memory, $SESSIONS idle sessions (iscsi-sessions -n $SESSIONS --tur)"
echo
echo "| target | VmRSS before (MiB) | VmRSS with sessions (MiB) | KiB per session | sessions the target lists | TEST UNIT READY |"
echo "|---|---:|---:|---:|---:|---|"
sessions_rss "mpath mem:256M" "$RSS_PID" "$RSS_ADDR" "$MP_IQN" mpath_sessions
sessions_rss "tgtd file LUN" "$TGTD_PID" "$TGT_ADDR" "$TGT_IQN" tgtd_sessions
stop_pid "$RSS_PID"
echo

# ---- throughput ------------------------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
alive() { # name pid: fail loudly when a target disappeared (crashed, or killed from outside)
  kill -0 "$2" 2>/dev/null && return 0
  tail -n 20 "$WORK/$1.log" >&2 || true
  die "target $1 (pid $2) is gone: crashed, or killed by something outside this script"
}
cpu_stat() { awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; } # busy total
# perf name pid url seconds: prints "iops target-cpu% initiator-cpu% other-cpu%", each CPU
# figure in % of one core over the run's wall time. "other" is the machine's busy time that
# neither the target nor iscsi-perf was charged with: other users' work, plus kernel (softirq)
# work of the loopback TCP path not charged to either process.
perf() {
  local name=$1 pid=$2 url=$3 secs=$4 t0 t1 b0 b1 iops u s w TIMEFORMAT='%3U %3S %3R'
  t0=$(cpu_ticks "$pid"); read -r b0 _ < <(cpu_stat)
  # -k: iscsi-perf may ignore SIGTERM while it tries to reconnect to a target that went away.
  { time timeout -k 5 $((secs + 30)) iscsi-perf -m 32 -b 8 -r -t "$secs" "$url" >"$WORK/perf.out" 2>&1; } 2>"$WORK/perf.time" ||
    { tr '\r' '\n' <"$WORK/perf.out" >&2; echo >&2; alive "$name" "$pid"; die "iscsi-perf against $name failed"; }
  alive "$name" "$pid"
  t1=$(cpu_ticks "$pid"); read -r b1 _ < <(cpu_stat)
  read -r u s w <"$WORK/perf.time"
  iops=$(tr '\r' '\n' <"$WORK/perf.out" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
  [ -n "$iops" ] || { tr '\r' '\n' <"$WORK/perf.out" >&2; die "no 'iops average' from iscsi-perf against $name"; }
  awk -v i="$iops" -v t=$((t1 - t0)) -v b=$((b1 - b0)) -v hz="$HZ" -v u="$u" -v s="$s" -v w="$w" \
    'BEGIN {tc = 100*t/hz/w; ic = 100*(u+s)/w; oc = 100*b/hz/w - tc - ic; if (oc < 0) oc = 0;
            printf "%d %.0f %.0f %.0f\n", i, tc, ic, oc}'
}

NAMES=(tgtd mpath-file mpath-mem)
declare -A PID=([tgtd]=$TGTD_PID [mpath-file]=$MPF_PID [mpath-mem]=$MPM_PID)
declare -A URL=([tgtd]="iscsi://$TGT_ADDR/$TGT_IQN/1" [mpath-file]="iscsi://$MPF_ADDR/$MP_IQN/1"
                [mpath-mem]="iscsi://$MPM_ADDR/$MP_IQN/1")
declare -A IOPS TCPU ICPU OCPU

if [ "$WARMUP" -gt 0 ]; then
  for n in "${NAMES[@]}"; do perf "$n" "${PID[$n]}" "${URL[$n]}" "$WARMUP" >/dev/null; done
fi

for r in $(seq "$ROUNDS"); do
  order=()
  for i in 0 1 2; do order+=("${NAMES[$(( (i + r - 1) % 3 ))]}"); done
  ORDER[$r]="${order[*]}"
  for n in "${order[@]}"; do
    read -r IOPS[$r,$n] TCPU[$r,$n] ICPU[$r,$n] OCPU[$r,$n] < <(perf "$n" "${PID[$n]}" "${URL[$n]}" "$DURATION")
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo "### iscsi-perf -m 32 -b 8 -r -t $DURATION (4 KiB random read, QD32), $ROUNDS rounds"
echo
echo "| round | order | tgtd (file) IOPS | mpath (file) IOPS | mpath (mem) IOPS | ratio file/tgtd | ratio mem/tgtd |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  t=${IOPS[$r,tgtd]} f=${IOPS[$r,mpath-file]} m=${IOPS[$r,mpath-mem]}
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$r" "${ORDER[$r]}" "$t" "$f" "$m" "$(ratio "$f" "$t")" "$(ratio "$m" "$t")"
done
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) printf "%.2f", v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2}'; }
col() { for r in $(seq "$ROUNDS"); do echo "${IOPS[$r,$1]}"; done | median | cut -d. -f1; }
ratios() { for r in $(seq "$ROUNDS"); do awk -v a="${IOPS[$r,$1]}" -v b="${IOPS[$r,tgtd]}" 'BEGIN {print a/b}'; done | median; }
MT=$(col tgtd) MF=$(col mpath-file) MM=$(col mpath-mem)
RF=$(ratios mpath-file) RM=$(ratios mpath-mem)
echo "| **median** | | **$MT** | **$MF** | **$MM** | **$RF** | **$RM** |"
echo
echo "CPU during each run, in % of one core (2 cores = 200 %): target / iscsi-perf / everything else"
echo
echo "| round | tgtd | mpath (file) | mpath (mem) | IOPS per target CPU-second: tgtd / mpath file / mpath mem |"
echo "|---:|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  cells=()
  for n in "${NAMES[@]}"; do cells+=("${TCPU[$r,$n]} / ${ICPU[$r,$n]} / ${OCPU[$r,$n]}"); done
  eff=()
  for n in "${NAMES[@]}"; do eff+=("$(awk -v i="${IOPS[$r,$n]}" -v c="${TCPU[$r,$n]}" 'BEGIN {printf "%.0f", (c > 0 ? 100*i/c : 0)}')"); done
  printf '| %s | %s | %s | %s | %s |\n' "$r" "${cells[0]}" "${cells[1]}" "${cells[2]}" "${eff[0]} / ${eff[1]} / ${eff[2]}"
done
echo
echo "- median of the per-round ratios mpath/tgtd: file vs file **${RF}x**, mpath mem:1G vs tgtd file **${RM}x** (goal >= 1.5x: file $(awk -v r="$RF" 'BEGIN {if (r >= 1.5) printf "met, by %+.0f%%", (r/1.5-1)*100; else printf "NOT met, %.0f%% short", (1-r/1.5)*100}'))"
echo "- resident memory after the runs (VmRSS / VmHWM, MiB): tgtd $(mib "$(rss_kib "$TGTD_PID")") / $(mib "$(hwm_kib "$TGTD_PID")"), mpath file $(mib "$(rss_kib "$MPF_PID")") / $(mib "$(hwm_kib "$MPF_PID")"), mpath mem:1G $(mib "$(rss_kib "$MPM_PID")") / $(mib "$(hwm_kib "$MPM_PID")")"
echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the benchmark itself keeps about 2 threads runnable)"
