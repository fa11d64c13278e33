# The Linux host stack against mpath's target: open-iscsi (iscsi_tcp) + dm-multipath +
# multipathd with no multipath.conf, `mpath target` with two portals in two ALUA groups
# (group 1 active/optimized, group 2 active/non-optimized), one veth path to each. fio
# writes and verifies through /dev/dm-0 while the optimized portal is silently blackholed;
# the kernel fails over (with Debian's timers, about 15 s) and sends SET TARGET PORT GROUPS,
# after which the target demotes the old group.
. "$LAB_DIR/lib.sh"

IQN=iqn.2026-01.io.mpath:klab
P1=$LAB_NET.1.2:3260
P2=$LAB_NET.2.2:3260
CTL=/tmp/mpath-target.sock

step "modules, namespaces"
lab_modules iscsi_tcp dm_multipath dm_service_time dm_round_robin scsi_dh_alua nf_tables
lab_paths target tgt 2

step "mpath target in namespace tgt"
lab_daemon target ip netns exec tgt "$MPATH" target --iqn "$IQN" \
    --portal "$P1" --portal "$P2@active-non-optimized" --lun mem:256M --control-socket "$CTL"
lab_wait 60 "the target's portals" lab_listening tgt "$P2" || fatal "mpath target did not listen: $(tail -5 "$LAB_OUT/target.log")"
cat "$LAB_OUT/target.log"

step "open-iscsi: discovery and login"
lab_daemon iscsid iscsid -f
lab_daemon multipathd multipathd -d -s -v3
lab_on_exit 'iscsiadm -m node --logout'
sleep 1
disc=$(timeout 60 iscsiadm -m discovery -t sendtargets -p "$P1" 2>&1)
echo "$disc"
check discovery-lists-both-portals "SendTargets through $P1 lists $P1 and $P2" \
    grep -q "^$P1,1 $IQN" <<<"$disc"
grep -q "^$P2,2 $IQN" <<<"$disc" || bad discovery-lists-both-portals "portal $P2 missing from SendTargets"
timeout 90 iscsiadm -m node -T "$IQN" --login 2>&1
iscsiadm -m session 2>&1
sessions=$(iscsiadm -m session 2>/dev/null | grep -c "$IQN")
check login-both-portals "$sessions sessions (one per portal)" test "$sessions" = 2
udevadm settle -t 30
lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL,SERIAL,WWN

step "scsi_dh_alua"
dmesg | grep -i alua
check alua-implicit-explicit "scsi_dh_alua: supports implicit and explicit TPGS" \
    dmesg_has 'supports implicit and explicit TPGS'

step "dm-multipath (no multipath.conf)"
test ! -e /etc/multipath.conf || fatal "/etc/multipath.conf exists on the host; this scenario runs on defaults"
# find_multipaths "strict" (the default) takes a WWID only once an operator has added it.
disk=$(lsblk -dno NAME,TRAN | awk '$2 == "iscsi" {print $1; exit}')
[ -n "$disk" ] || fatal "no iSCSI disk appeared"
multipath -a "/dev/$disk" 2>&1
multipathd reconfigure 2>&1
lab_wait 60 "the multipath map" test -b /dev/dm-0 || true
lab_wait 30 "both paths in the map" sh -c 'multipathd show paths raw format "%d %t" | grep -c active | grep -qx 2'
multipath -ll 2>&1 | tee "$LAB_OUT/multipath-ll.txt"
multipathd show maps json > "$LAB_OUT/maps.json" 2>&1
groups=$(lab_json "$LAB_OUT/maps.json" '" ".join("%d/%s/%s" % (g["pri"], g["dm_st"], ",".join(p["dev"] for p in g["paths"])) for m in j["maps"] for g in m["path_groups"])')
nmaps=$(lab_json "$LAB_OUT/maps.json" 'len(j["maps"])')
echo "groups (prio/state/paths): $groups"
check one-map "multipathd shows $nmaps map" test "$nmaps" = 1
# alua prioritizer: 50 for active/optimized, 10 for active/non-optimized.
check optimized-and-non-optimized-groups "groups $groups" \
    grep -Eq '^50/active/[a-z]+ 10/enabled/[a-z]+$' <<<"$groups"
grep -q 'hwhandler=.1 alua' "$LAB_OUT/multipath-ll.txt" ||
    bad alua-hardware-handler "multipath -ll does not show hwhandler='1 alua'"

step "fio verify through /dev/dm-0, optimized portal blackholed"
fio_verify_start k1 50 --filename=/dev/dm-0 --direct=1 --ioengine=libaio
sleep 8
ts "blackhole $P1"
lab_blackhole on "${P1%:*}"
sleep 25
ts "restore $P1"
lab_blackhole off "${P1%:*}"
fio_verify_end k1
check fio-verify-through-blackhole "fio exit $FIO_RC, error $FIO_ERROR, $FIO_WRITES writes, $FIO_VERIFIED verified as they went; longest stall ${FIO_STALL_MS} ms" \
    test "$FIO_RC" = 0 -a "$FIO_ERROR" = 0
grep -i "verify\|bad" "$LAB_OUT/k1.err" && bad fio-no-verify-messages "fio printed verify errors"

step "explicit ALUA: the kernel's STPG demoted the old group"
"$MPATH" target ctl --socket "$CTL" status 2>&1 | tee "$LAB_OUT/target-status.txt"
dmesg | grep -i alua | tail -5
check stpg-demotes-old-group "target group 2 active/optimized, group 1 active/non-optimized after failover" \
    sh -c "grep -Eq 'group 2 .*active-optimized' '$LAB_OUT/target-status.txt' && grep -Eq 'group 1 .*active-non-optimized' '$LAB_OUT/target-status.txt'"
# The restored path comes back in the lower group: the host sees one optimized group.
lab_wait 40 "the restored path back in the map" sh -c 'multipathd show paths raw format "%t" | grep -c active | grep -qx 2'
multipathd show maps json > "$LAB_OUT/maps-after.json" 2>&1
multipath -ll 2>&1
after=$(lab_json "$LAB_OUT/maps-after.json" '" ".join("%d/%s" % (g["pri"], ",".join(p["dev"] + ":" + p["dm_st"] for p in g["paths"])) for m in j["maps"] for g in m["path_groups"])')
was=$(lab_json "$LAB_OUT/maps.json" '[g["paths"][0]["dev"] for g in j["maps"][0]["path_groups"] if g["pri"] == 50][0]')
echo "groups after the path came back (prio/path:state): $after; optimized before: $was"
check host-sees-one-optimized-group "groups $after, $was optimized before the failover" \
    grep -Eq "(^| )10/$was:active( |\$)" <<<"$after"
grep -Eq "(^| )50/[a-z]+:active( |\$)" <<<"$after" || bad host-sees-one-optimized-group "no active path at priority 50"

lab_finish
