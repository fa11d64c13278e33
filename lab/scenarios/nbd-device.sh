# mpath's kernel NBD device: /dev/nbdN per map attached by the daemon over netlink (no
# nbd-client), kept by the kernel across the daemon's crash, restart and upgrade (a dead
# connection timeout, then NBD_CMD_RECONFIGURE); see lab/device-restarts.sh for the steps.
. "$LAB_DIR/lib.sh"

KIND=nbd MODULE=nbd EXPORT=nbd_device DEV_PREFIX=/dev/nbd EVENTS=nbd-device
. "$LAB_DIR/device-restarts.sh"
