//! The control socket: one JSON request per line; changes only from root or the daemon's
//! user (SO_PEERCRED), reading for anyone who can open it.

use std::process::Command;
use std::time::Duration;

use mpathd::{control, Daemon, Listeners, Request, Response};

use crate::common::*;

async fn call(sock: &std::path::Path, r: Request) -> Response {
    let mut out = None;
    control::call(sock, &r, |resp| out = Some(resp))
        .await
        .unwrap();
    out.unwrap()
}

/// Send one raw line as another user; the answer line.
fn call_as(uid: u32, sock: &std::path::Path, line: &str) -> Option<String> {
    if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/bin/setpriv").exists() {
        return None;
    }
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         s.sendall({:?}.encode()+b'\\n')\nf=s.makefile()\nsys.stdout.write(f.readline())\n",
        sock.display().to_string(),
        line
    );
    let out = Command::new("/usr/bin/setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_refuses_changes_from_other_users() {
    let dir = testkit::TempDir::new("sock");
    let cfg = config(&dir, &[]);
    let sock = cfg.control_socket.clone();
    // No NBD, no metrics in the rig's configuration: only the control socket is bound.
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let mut d = Daemon::start(cfg.clone(), listeners, None).unwrap();

    // Our own user: reads and changes are served.
    let r = call(&sock, Request::ShowStatus).await;
    assert!(r.ok && r.text.contains("0 maps"), "{}", r.text);
    let r = call(&sock, Request::FailPath { path: "x".into() }).await;
    assert!(!r.ok && r.text.contains("no path"), "{}", r.text);
    // A line that is no request is answered, and the connection goes on.
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    s.write_all(b"{\"cmd\":\"dance\"}\n{\"cmd\":\"show-maps\"}\n")
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    let first: Response = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(
        !first.ok && first.text.contains("bad request"),
        "{}",
        first.text
    );
    let second: Response =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(second.ok, "{}", second.text);

    // Another user (nobody): reads yes, changes no.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let show = serde_json::to_string(&Request::ShowStatus).unwrap();
    let stop = serde_json::to_string(&Request::Shutdown).unwrap();
    match call_as(65534, &sock, &show) {
        None if testkit::peers_required() => {
            panic!("not root or no /usr/bin/setpriv, and MPATH_REQUIRE_PEERS=1 forbids skipping the other-user half")
        }
        None => eprintln!("not root or no setpriv: the other-user half is covered by unit tests"),
        Some(out) => {
            let r: Response = serde_json::from_str(&out).unwrap();
            assert!(r.ok, "{out}");
            let out = call_as(65534, &sock, &stop).unwrap();
            let r: Response = serde_json::from_str(&out).unwrap();
            assert!(!r.ok && r.text.contains("permission denied"), "{out}");
            assert!(r.text.contains("uid 65534"), "{out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = call(&sock, Request::ShowStatus).await;
            assert!(r.ok, "the daemon stopped on a refused shutdown");
        }
    }
    // Our shutdown is obeyed.
    let r = call(&sock, Request::Shutdown).await;
    assert!(r.ok);
    d.stop().await;
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_events_follow_streams_the_backlog_then_live_events() {
    use iscsi_target::config::AluaState::ActiveOptimized as AO;
    let dir = testkit::TempDir::new("follow");
    let t = Target::start(
        "iqn.2026-01.io.mpath:follow",
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 1 << 20)],
    )
    .await;
    let cfg = config(&dir, &t.portals[..1]);
    let sock = cfg.control_socket.clone();
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let mut d = Daemon::start(cfg, listeners, None).unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn({
        let sock = sock.clone();
        async move {
            let req = Request::ShowEvents {
                follow: true,
                last: Some(3),
            };
            let _ = control::call(&sock, &req, |r| {
                let _ = tx.send(r);
            })
            .await;
        }
    });
    // The backlog: one response per event, its data the event.
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(e.ok);
        assert!(
            e.data["kind"].is_string() && e.data["t_ms"].is_u64(),
            "{e:?}"
        );
    }
    // A live event: an operator fails a path.
    let p = t.portals[1].to_string();
    ask(&c, Request::FailPath { path: p.clone() }).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let r = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no live operator event; got {seen:?}"))
            .unwrap();
        let e = &r.data;
        seen.push(r.text.clone());
        if e["kind"] == "operator" {
            assert_eq!(e["map"], map);
            assert_eq!(e["path"], format!("{p}/1"));
            assert!(
                r.text.contains("operator") && r.text.contains("fail path"),
                "{}",
                r.text
            );
            break;
        }
    }
    follower.abort();
    d.stop().await;
    t.stop().await;
}

/// The control socket is mode 0660: the daemon's user and, with `control_socket_group`,
/// that group's members (who may read, not change); nobody else can connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0660_and_its_group_reads() {
    use std::os::unix::fs::MetadataExt;
    let dir = testkit::TempDir::new("sockmode");
    let mut cfg = config(&dir, &[]);
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        cfg.control_socket_group = Some("nogroup".into());
    }
    let sock = cfg.control_socket.clone();
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let mut d = Daemon::start(cfg, listeners, None).unwrap();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    if !root {
        if testkit::peers_required() {
            panic!("not root: the group half needs root, and MPATH_REQUIRE_PEERS=1 forbids skipping it");
        }
        eprintln!("not root: the socket's group is not tested");
    } else {
        assert_eq!(meta.gid(), 65534, "the configured group");
        // A member of the group reads; a changing request is still refused.
        let show = serde_json::to_string(&Request::ShowStatus).unwrap();
        let out = call_as(65534, &sock, &show).expect("setpriv");
        let r: Response = serde_json::from_str(&out).unwrap();
        assert!(r.ok, "{out}");
        let stop = serde_json::to_string(&Request::Shutdown).unwrap();
        let r: Response = serde_json::from_str(&call_as(65534, &sock, &stop).unwrap()).unwrap();
        assert!(!r.ok && r.text.contains("permission denied"), "{}", r.text);
        // Anyone else cannot even connect.
        let other = Command::new("/usr/bin/setpriv")
            .args([
                "--reuid=1",
                "--regid=1",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(format!(
                "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})",
                sock.display().to_string()
            ))
            .output()
            .unwrap();
        assert!(!other.status.success());
        assert!(
            String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&other.stderr)
        );
    }
    d.stop().await;
}
