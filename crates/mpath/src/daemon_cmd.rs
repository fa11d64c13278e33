//! `mpath daemon` and the commands that talk to it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mpathd::config::{self, DaemonConfig, PortalConfig};
use mpathd::{control, Daemon, Listeners, Request};

use sd_notify::NotifyState;

use crate::{service, ClientOpts, Command, DaemonCmd, ShowCmd};

pub async fn run(c: Command) -> Result<()> {
    match c {
        Command::Daemon(d) => daemon(d).await,
        Command::Show(s) => {
            let req = show_request(&s)?;
            call(&s.client, req).await
        }
        Command::Fail(p) => call(&p.client, Request::FailPath { path: p.path }).await,
        Command::Reinstate(p) => call(&p.client, Request::ReinstatePath { path: p.path }).await,
        Command::Switchgroup { map, group, client } => {
            call(&client, Request::SwitchGroup { map, group }).await
        }
        Command::Disablequeueing { map, client } => {
            call(&client, Request::Queueing { map, on: false }).await
        }
        Command::Restorequeueing { map, client } => {
            call(&client, Request::Queueing { map, on: true }).await
        }
        Command::Login {
            portal,
            target,
            chap_user,
            chap_secret_file,
            mutual_chap_user,
            mutual_chap_secret_file,
            client,
        } => {
            let portal = portal_arg(&portal);
            let chap = chap_arg(chap_user, chap_secret_file.as_deref())?;
            let mutual_chap = chap_arg(mutual_chap_user, mutual_chap_secret_file.as_deref())?;
            call(
                &client,
                Request::Login {
                    portal,
                    target,
                    chap,
                    mutual_chap,
                },
            )
            .await
        }
        Command::Logout {
            portal,
            target,
            client,
        } => {
            let portal = portal_arg(&portal);
            call(&client, Request::Logout { portal, target }).await
        }
        Command::Reconfigure { client } => call(&client, Request::Reconfigure).await,
        Command::Shutdown { client } => call(&client, Request::Shutdown).await,
        _ => unreachable!("dispatched in main"),
    }
}

/// The request a `show` command line asks for; a malformed one is a usage error (exit 2).
fn show_request(s: &ShowCmd) -> Result<Request> {
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    let req = match (s.what.as_str(), args.as_slice()) {
        ("map", [m]) => Request::ShowMap { map: m.to_string() },
        ("path", [p]) => Request::ShowPath {
            path: p.to_string(),
        },
        ("paths", []) => Request::ShowPaths,
        ("maps", []) => Request::ShowMaps,
        ("paths", ["format", f]) => Request::ShowPathsFormat {
            format: f.to_string(),
            raw: false,
        },
        ("paths", ["raw", "format", f]) => Request::ShowPathsFormat {
            format: f.to_string(),
            raw: true,
        },
        ("maps", ["format", f]) => Request::ShowMapsFormat {
            format: f.to_string(),
            raw: false,
        },
        ("maps", ["raw", "format", f]) => Request::ShowMapsFormat {
            format: f.to_string(),
            raw: true,
        },
        ("paths" | "maps", _) => usage(&format!(
            "mpath show {} [[raw] format FORMAT] (multipathd's wildcards, e.g. {:?})",
            s.what,
            if s.what == "paths" {
                "%d %w %t %T %p"
            } else {
                "%n %w %d %N"
            }
        )),
        ("map", _) => usage("mpath show map MAP (one map, by name or WWID)"),
        ("path", _) => usage("mpath show path PATH (as show paths names it, or a unique prefix)"),
        (_, [_, ..]) => usage(&format!(
            "mpath show {} takes no argument {:?}",
            s.what, s.args
        )),
        ("topology", []) => Request::ShowTopology,
        ("status", []) => Request::ShowStatus,
        ("stats", []) => Request::ShowStats,
        ("config", []) => Request::ShowConfig,
        ("sessions", []) => Request::ShowSessions { verbose: s.verbose },
        _ => Request::ShowEvents {
            follow: s.follow,
            last: s.last,
        },
    };
    Ok(req)
}

/// A portal as the daemon takes it (IP:PORT): a host name is resolved here; one that does
/// not resolve is a usage error.
fn portal_arg(p: &str) -> String {
    match crate::iscsi_cmd::resolve_portal(p) {
        Ok(a) => a.to_string(),
        Err(e) => {
            eprintln!("error: PORTAL {p}: {e}");
            std::process::exit(2)
        }
    }
}

/// A usage error: said on stderr, exit 2 (as clap's own).
fn usage(what: &str) -> ! {
    eprintln!("error: usage: {what}");
    std::process::exit(2)
}

fn socket(o: &ClientOpts) -> PathBuf {
    o.socket
        .clone()
        .unwrap_or_else(config::client_control_socket)
}

pub(crate) async fn call(o: &ClientOpts, req: Request) -> Result<()> {
    let mut failed = None;
    let json = o.json;
    // `show events --follow --json` is NDJSON: one event per line.
    let follow = matches!(req, Request::ShowEvents { follow: true, .. });
    let called = control::call(&socket(o), &req, |r| {
        if json && follow {
            println!("{}", serde_json::to_string(&r.data).unwrap_or_default());
        } else if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&r.data).unwrap_or_default()
            );
        } else if r.ok {
            // Every reply ends its line, whatever the daemon's text does.
            if r.text.ends_with('\n') || r.text.is_empty() {
                print!("{}", r.text);
            } else {
                println!("{}", r.text);
            }
        }
        if !r.ok {
            // Said once, on stderr, by the error below.
            failed = Some(r.text.clone());
        }
    })
    .await;
    if let Err(e) = called {
        // Scripts tell "no daemon" (3) from "the daemon said no" (1).
        eprintln!("Error: {e}");
        std::process::exit(EXIT_UNREACHABLE);
    }
    if let Some(e) = failed {
        bail!("{}", e.trim());
    }
    Ok(())
}

/// The exit status when the daemon cannot be reached (its refusals exit 1, usage errors 2).
pub const EXIT_UNREACHABLE: i32 = 3;

async fn daemon(d: DaemonCmd) -> Result<()> {
    let mut cfg = match &d.config {
        Some(p) => config::load_file(p)?,
        None => DaemonConfig::default(),
    };
    // What the flags say, resolved once: applied over the file now and at every
    // reconfigure (a portal given with --portal stays logged in through a reload).
    let mut portals = Vec::new();
    for p in &d.portal {
        let address = crate::iscsi_cmd::resolve_portal(p)
            .map_err(|m| anyhow::anyhow!("--portal {p}: {m}"))?;
        portals.push(address);
    }
    let nbd = match &d.nbd {
        None => None,
        Some(n) if n == "off" => Some(None),
        Some(a) => Some(Some(
            a.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--nbd {a}: expected IP:PORT or off"))?,
        )),
    };
    let metrics = match &d.metrics {
        None => None,
        Some(m) => Some(
            m.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--metrics {m}: expected IP:PORT"))?,
        ),
    };
    let (initiator, socket, fuse) = (d.initiator.clone(), d.socket.clone(), d.fuse.clone());
    let (ublk, nbd_device) = (d.ublk, d.nbd_device);
    let overlay: mpathd::ConfigOverlay = std::sync::Arc::new(move |cfg: &mut DaemonConfig| {
        for &address in &portals {
            if !cfg.portals.iter().any(|q| q.address == address) {
                cfg.portals.push(PortalConfig::new(address));
            }
        }
        if let Some(i) = &initiator {
            cfg.initiator_name = i.clone();
        }
        if let Some(s) = &socket {
            cfg.control_socket = s.clone();
        }
        if let Some(n) = nbd {
            cfg.nbd_listen = n;
        }
        if let Some(f) = &fuse {
            cfg.fuse_dir = Some(f.clone());
        }
        if ublk {
            cfg.ublk = true;
        }
        if nbd_device {
            cfg.nbd_device = true;
        }
        if let Some(m) = metrics {
            cfg.metrics = Some(m);
        }
    });
    overlay(&mut cfg);
    if cfg.portals.is_empty() {
        bail!("no portal: give --portal ADDR or a [[portal]] in --config FILE");
    }
    let listeners = Listeners::bind(&cfg).await?;
    eprintln!(
        "mpath daemon: control socket {}",
        cfg.control_socket.display()
    );
    if let Some(a) = cfg.nbd_listen {
        eprintln!("mpath daemon: NBD on {a} (one export per map)");
    }
    let settle = cfg.settle;
    let daemon = Daemon::start_with_overlay(cfg, listeners, d.config.clone(), Some(overlay))?;
    service::notify(&[NotifyState::Status("logging in, assembling maps")]);
    let control = daemon.control();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop_signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        service::notify_stopping();
    };
    let mut stop_signal = Box::pin(stop_signal);
    // Ready when the maps are assembled from the paths present, or `settle` passed (late
    // paths join their maps afterwards); a stop asked for meanwhile is not kept waiting.
    let stopped_early = tokio::select! {
        _ = daemon.settle(settle) => false,
        _ = &mut stop_signal => true,
    };
    if !stopped_early {
        let line = status_line(&control).await;
        service::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        tracing::info!("ready: {line}");
        // The keepalive reads the line a task refreshes every second (the maps answer
        // asynchronously).
        let latest = std::sync::Arc::new(std::sync::Mutex::new(line));
        let (c, l) = (control.clone(), latest.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let line = status_line(&c).await;
                *l.lock().unwrap_or_else(|e| e.into_inner()) = line;
            }
        });
        service::spawn_keepalive(move || latest.lock().unwrap_or_else(|e| e.into_inner()).clone());
    }
    // SIGHUP: reconfigure.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let c = control.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            service::notify_reloading();
            match c.handle(Request::Reconfigure).await {
                r if r.ok => tracing::info!("SIGHUP: {}", r.text.trim()),
                r => tracing::warn!("SIGHUP: reconfigure failed: {}", r.text.trim()),
            }
            let line = status_line(&c).await;
            service::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        }
    });
    daemon
        .run(async move {
            if !stopped_early {
                stop_signal.await;
            }
        })
        .await;
    // Stopped by `mpath shutdown` rather than a signal: said late, but said.
    service::notify_stopping();
    Ok(())
}

/// The daemon in one line, for `systemctl status`: maps, paths by checker state, sessions,
/// unreachable portals.
async fn status_line(control: &mpathd::Control) -> String {
    let s = match control.status().await.parse::<mpathd::reply::Status>() {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut line = format!("{} map(s), {} path(s)", s.maps, s.paths);
    if !s.paths_by_checker.is_empty() {
        let states: Vec<String> = s
            .paths_by_checker
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        line.push_str(&format!(" ({})", states.join(", ")));
    }
    line.push_str(&format!(", {}/{} session(s) up", s.sessions_up, s.sessions));
    let unreachable = s.unreachable_portals.len();
    if unreachable > 0 {
        line.push_str(&format!(", {unreachable} portal(s) unreachable"));
    }
    line
}

/// CHAP credentials from a user name and a file holding the secret (its first line, `-`:
/// standard input), so that the secret never shows in the process list.
fn chap_arg(
    user: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<mpathd::control::ChapSecret>> {
    let (Some(user), Some(file)) = (user, file) else {
        return Ok(None);
    };
    let text = if file == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("reading the CHAP secret from standard input")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the CHAP secret from {}", file.display()))?
    };
    let secret = text.lines().next().unwrap_or_default().to_string();
    if secret.is_empty() {
        anyhow::bail!("{}: no CHAP secret in it (its first line)", file.display());
    }
    Ok(Some(mpathd::control::ChapSecret { user, secret }))
}
