//! `mpath target ctl` as scripts meet it: the socket flag anywhere, exit 3 when no target
//! answers (as for the daemon's commands).

use std::process::Command;

#[test]
fn target_ctl_takes_its_socket_after_the_operation_and_exits_3_unreached() {
    for args in [
        ["target", "ctl", "status", "--socket", "/nonexistent/t.sock"],
        ["target", "ctl", "--socket", "/nonexistent/t.sock", "status"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_mpath"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("cannot reach the target's control socket /nonexistent/t.sock"),
            "{err}"
        );
    }
}
