# mpath's ublk export: /dev/ublkbN per map, kept by the kernel across the daemon's crash,
# restart and upgrade (USER_RECOVERY); see lab/device-restarts.sh for the steps.
. "$LAB_DIR/lib.sh"

KIND=ublk MODULE=ublk_drv EXPORT=ublk DEV_PREFIX=/dev/ublkb EVENTS=ublk
. "$LAB_DIR/device-restarts.sh"
