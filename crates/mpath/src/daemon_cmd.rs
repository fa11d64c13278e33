//! `mpath daemon` and the commands that talk to it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mpathd::config::{self, DaemonConfig, PortalConfig};
use mpathd::{control, Daemon, Listeners, Request};

use crate::{ClientOpts, Command, DaemonCmd};

pub async fn run(c: Command) -> Result<()> {
    match c {
        Command::Daemon(d) => daemon(d).await,
        Command::Show(s) => {
            let req = match s.what.as_str() {
                "topology" => Request::ShowTopology,
                "paths" => Request::ShowPaths,
                "maps" => Request::ShowMaps,
                "status" => Request::ShowStatus,
                "stats" => Request::ShowStats,
                "config" => Request::ShowConfig,
                _ => Request::ShowEvents {
                    follow: s.follow,
                    last: s.last,
                },
            };
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
        Command::Reconfigure { client } => call(&client, Request::Reconfigure).await,
        Command::Shutdown { client } => call(&client, Request::Shutdown).await,
        _ => unreachable!("dispatched in main"),
    }
}

fn socket(o: &ClientOpts) -> PathBuf {
    o.socket
        .clone()
        .unwrap_or_else(config::default_control_socket)
}

async fn call(o: &ClientOpts, req: Request) -> Result<()> {
    let mut failed = None;
    let json = o.json;
    let called = control::call(&socket(o), &req, |r| {
        if json {
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
    for p in &d.portal {
        let address =
            iscsi_target::config::parse_portal(p).map_err(|m| anyhow::anyhow!("--portal: {m}"))?;
        if !cfg.portals.iter().any(|q| q.address == address) {
            cfg.portals.push(PortalConfig {
                address,
                chap: None,
                mutual_chap: None,
                targets: vec![],
                header_digest: false,
                data_digest: false,
            });
        }
    }
    if cfg.portals.is_empty() {
        bail!("no portal: give --portal ADDR or a [[portal]] in --config FILE");
    }
    if let Some(i) = &d.initiator {
        cfg.initiator_name = i.clone();
    }
    if let Some(s) = &d.socket {
        cfg.control_socket = s.clone();
    }
    if let Some(n) = &d.nbd {
        cfg.nbd_listen = match n.as_str() {
            "off" => None,
            a => Some(
                a.parse()
                    .with_context(|| format!("--nbd {a}: expected IP:PORT or off"))?,
            ),
        };
    }
    if let Some(f) = &d.fuse {
        cfg.fuse_dir = Some(f.clone());
    }
    if d.ublk {
        cfg.ublk = true;
    }
    if d.nbd_device {
        cfg.nbd_device = true;
    }
    if let Some(m) = &d.metrics {
        cfg.metrics = Some(
            m.parse()
                .with_context(|| format!("--metrics {m}: expected IP:PORT"))?,
        );
    }
    let listeners = Listeners::bind(&cfg).await?;
    eprintln!(
        "mpath daemon: control socket {}",
        cfg.control_socket.display()
    );
    if let Some(a) = cfg.nbd_listen {
        eprintln!("mpath daemon: NBD on {a} (one export per map)");
    }
    let daemon = Daemon::start(cfg, listeners, d.config.clone())?;
    let control = daemon.control();
    // SIGHUP: reconfigure.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match control.handle(Request::Reconfigure).await {
                r if r.ok => tracing::info!("SIGHUP: {}", r.text.trim()),
                r => tracing::warn!("SIGHUP: reconfigure failed: {}", r.text.trim()),
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    daemon
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await;
    Ok(())
}
