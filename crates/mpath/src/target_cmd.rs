//! `mpath target` and `mpath target ctl`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iscsi_target::backend::BackingSpec;
use iscsi_target::config::{
    self, AluaMode, AluaState, Chap, LunSpec, PortalGroupSpec, ServerConfig, StpgPolicy, TargetSpec,
};
use iscsi_target::ctl::{self, CtlRequest, CtlResponse};
use iscsi_target::Fault;
use sd_notify::NotifyState;

use crate::{CtlCmd, CtlOp, TargetServe};

pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("mpath-target.sock"),
        None => PathBuf::from("/tmp/mpath-target.sock"),
    }
}

fn flags_config(f: &TargetServe) -> Result<ServerConfig> {
    let iqn = f
        .iqn
        .clone()
        .context("give --iqn with --portal and --lun, or --config FILE")?;
    config::check_name(&iqn).map_err(|m| anyhow::anyhow!("--iqn: {m}"))?;
    if f.portal.is_empty() {
        bail!("--portal: give at least one portal, e.g. --portal 127.0.0.1:3260");
    }
    let mut groups = Vec::new();
    for (i, p) in f.portal.iter().enumerate() {
        let (addr, state) = match p.split_once('@') {
            Some((a, s)) => (
                a,
                AluaState::parse(s).with_context(|| {
                    format!(
                        "--portal {p}: unknown ALUA state {s:?} (one of {})",
                        AluaState::NAMES
                    )
                })?,
            ),
            None => (p.as_str(), AluaState::ActiveOptimized),
        };
        groups.push(PortalGroupSpec {
            tag: i as u16 + 1,
            portals: vec![config::parse_portal(addr).map_err(|m| anyhow::anyhow!("--portal: {m}"))?],
            state,
            preferred: false,
        });
    }
    let mut luns = Vec::new();
    let mut next = 1u16;
    for l in &f.lun {
        let (id, spec) = match l.split_once('=') {
            Some((id, spec)) if id.chars().all(|c| c.is_ascii_digit()) => (
                id.parse::<u16>()
                    .with_context(|| format!("--lun {l}: bad LUN number"))?,
                spec,
            ),
            _ => (next, l.as_str()),
        };
        next = id + 1;
        luns.push(LunSpec {
            id,
            backing: BackingSpec::parse(spec).map_err(|m| anyhow::anyhow!("--lun: {m}"))?,
            block_size: 512,
            serial: None,
            vendor: config::DEFAULT_VENDOR.into(),
            product: config::DEFAULT_PRODUCT.into(),
        });
    }
    if luns.is_empty() {
        bail!("--lun: give at least one LUN, e.g. --lun mem:256M");
    }
    let Some(alua) = AluaMode::parse(&f.alua) else {
        bail!(
            "--alua {}: expected none, implicit, explicit or both",
            f.alua
        )
    };
    let Some(stpg) = StpgPolicy::parse(&f.stpg) else {
        bail!("--stpg {}: expected demote-others or as-requested", f.stpg)
    };
    let chap = |s: &Option<String>, flag: &str| -> Result<Option<Chap>> {
        s.as_deref()
            .map(|v| Chap::parse(v).map_err(|m| anyhow::anyhow!("{flag}: {m}")))
            .transpose()
    };
    let cfg = ServerConfig {
        targets: vec![TargetSpec {
            iqn,
            alias: None,
            portal_groups: groups,
            luns,
            allowed_initiators: f.allow.clone(),
            chap: chap(&f.chap, "--chap")?,
            mutual_chap: chap(&f.mutual_chap, "--mutual-chap")?,
            alua,
            stpg,
        }],
        ..ServerConfig::default()
    };
    config::validate(&cfg).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    Ok(cfg)
}

pub async fn target_serve(f: TargetServe) -> Result<()> {
    let mut cfg = match &f.config {
        Some(path) => config::load_file(path)?,
        None => flags_config(&f)?,
    };
    if f.control_socket.is_some() {
        cfg.control_socket = f.control_socket.clone();
    }
    // As a service: in the directory systemd made for it (/run/mpath-target).
    let socket = cfg.control_socket.clone().unwrap_or_else(|| {
        crate::service::runtime_directory()
            .map(|d| d.join("mpath-target.sock"))
            .unwrap_or_else(default_socket)
    });
    let server = iscsi_target::Server::bind(cfg).await?;
    for t in &server.config().targets {
        eprintln!("target {}", t.iqn);
        for g in &t.portal_groups {
            for p in &g.portals {
                eprintln!("  portal {p} (group {}, {})", g.tag, g.state);
            }
        }
    }
    for t in server.control().status().targets {
        for l in t.luns {
            eprintln!(
                "  LUN {} {} {} bytes, WWID {}",
                l.id, l.backing, l.size, l.wwid
            );
        }
    }
    eprintln!("control socket {}", socket.display());
    let control = server.control();
    let sock = socket.clone();
    tokio::spawn(async move {
        if let Err(e) = ctl::serve(&sock, control).await {
            tracing::error!("control socket {}: {e}", sock.display());
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let line = status_line(&server.control());
    crate::service::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    let c = server.control();
    crate::service::spawn_keepalive(move || status_line(&c));
    server
        .run(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            crate::service::notify_stopping();
            eprintln!("shutting down");
        })
        .await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The target in one line, for `systemctl status`.
fn status_line(control: &iscsi_target::Control) -> String {
    let st = control.status();
    format!(
        "{} target(s), {} portal(s), {} session(s)",
        st.targets.len(),
        st.portals.len(),
        control.sessions().len()
    )
}

pub async fn target_ctl(c: CtlCmd) -> Result<()> {
    let req = match &c.op {
        CtlOp::Status => CtlRequest::Status,
        CtlOp::Sessions => CtlRequest::Sessions,
        CtlOp::Alua {
            target,
            group,
            state,
        } => CtlRequest::SetAlua {
            target: target.clone(),
            group: *group,
            state: AluaState::parse(state).with_context(|| {
                format!("unknown ALUA state {state:?} (one of {})", AluaState::NAMES)
            })?,
        },
        CtlOp::Lun { target, lun, state }
            if state == "read-errors" || state == "no-read-errors" =>
        {
            CtlRequest::SetLunReadErrors {
                target: target.clone(),
                lun: *lun,
                on: state == "read-errors",
            }
        }
        CtlOp::Lun { target, lun, state } if state == "busy" || state == "not-busy" => {
            CtlRequest::SetLunBusy {
                target: target.clone(),
                lun: *lun,
                on: state == "busy",
            }
        }
        CtlOp::Lun { target, lun, state } if state == "rescan" => CtlRequest::RescanLun {
            target: target.clone(),
            lun: *lun,
        },
        CtlOp::Lun { target, lun, state } => CtlRequest::SetLunOnline {
            target: target.clone(),
            lun: *lun,
            online: state == "online",
        },
        CtlOp::Fault {
            portal,
            fault,
            value,
        } => {
            let need =
                |what: &str| value.with_context(|| format!("{fault} needs a value ({what})"));
            match fault.as_str() {
                "reset" => CtlRequest::ResetPortal { portal: *portal },
                "blackhole" => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::Blackhole,
                },
                "delay" => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::Delay {
                        ms: need("milliseconds")?,
                    },
                },
                "busy" => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::Busy,
                },
                "task-set-full" => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::TaskSetFull,
                },
                "drop-after" => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::DropAfter {
                        pdus: need("PDUs")?,
                    },
                },
                _ => CtlRequest::SetFault {
                    portal: *portal,
                    fault: Fault::None,
                },
            }
        }
    };
    let socket = c.socket.clone().unwrap_or_else(|| {
        crate::service::client_socket(default_socket(), crate::service::SERVICE_TARGET_SOCKET)
    });
    let resp = match ctl::call(&socket, &req).await {
        Ok(r) => r,
        Err(e) => {
            // As for the daemon: "no target there" (3) is not "the target said no" (1).
            eprintln!("Error: {e}");
            std::process::exit(crate::daemon_cmd::EXIT_UNREACHABLE);
        }
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        if let CtlResponse::Error { .. } = resp {
            std::process::exit(1);
        }
        return Ok(());
    }
    match resp {
        CtlResponse::Ok => {}
        CtlResponse::Error { message } => bail!("{message}"),
        CtlResponse::Status(s) => {
            for t in s.targets {
                println!("target {} (alua {}, stpg {})", t.iqn, t.alua, t.stpg);
                for g in t.portal_groups {
                    let ps: Vec<String> = g.portals.iter().map(|p| p.to_string()).collect();
                    println!(
                        "  group {} {}{} portals {}",
                        g.tag,
                        g.state,
                        if g.preferred { " (preferred)" } else { "" },
                        ps.join(" ")
                    );
                }
                for l in t.luns {
                    println!(
                        "  lun {} {} size {} block {} {} wwid {}",
                        l.id,
                        l.backing,
                        l.size,
                        l.block_size,
                        if l.online { "online" } else { "OFFLINE" },
                        l.wwid
                    );
                }
            }
            let mut portals = s.portals;
            portals.sort_by_key(|p| p.portal);
            for p in portals {
                println!(
                    "portal {} connections {} fault {}",
                    p.portal, p.connections, p.fault
                );
            }
        }
        CtlResponse::Sessions { sessions } => {
            println!(
                "{:<40} {:<16} {:>5} {:<22} {:<22} {:>6} {:>9}",
                "initiator", "isid", "tsih", "portal", "peer", "tasks", "digests"
            );
            for s in sessions {
                println!(
                    "{:<40} {:<16} {:>5} {:<22} {:<22} {:>6} {:>9}   {}",
                    s.initiator,
                    s.isid,
                    s.tsih,
                    s.portal,
                    s.peer,
                    s.outstanding_tasks,
                    match (s.header_digest, s.data_digest) {
                        (true, true) => "hdr+data",
                        (true, false) => "hdr",
                        (false, true) => "data",
                        _ => "none",
                    },
                    if s.discovery {
                        "(discovery)".to_string()
                    } else {
                        s.target
                    }
                );
            }
        }
    }
    Ok(())
}
