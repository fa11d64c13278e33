//! Running under a service manager: the systemd units (`mpath systemd units`), the
//! sd_notify protocol (readiness, status, watchdog, reload, stop), the runtime directory
//! systemd gives a service, and log lines for the journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sd_notify::NotifyState;

use crate::SystemdWhat;

/// The units as shipped in the tree, `@MPATH@` standing for the binary.
pub const UNITS: [(&str, &str); 2] = [
    (
        "mpath-daemon.service",
        include_str!("../../../dist/systemd/mpath-daemon.service"),
    ),
    (
        "mpath-target.service",
        include_str!("../../../dist/systemd/mpath-target.service"),
    ),
];

/// Where `mpath systemd units --install` writes by default.
pub const UNIT_DIR: &str = "/etc/systemd/system";

pub fn run(what: SystemdWhat) -> Result<()> {
    match what {
        SystemdWhat::Units {
            mpath,
            install,
            dir,
        } => {
            let bin = match mpath {
                Some(p) => p,
                None => std::env::current_exe().context("the path of this mpath binary")?,
            };
            let units = units(&bin)?;
            if !install {
                for (i, (_, text)) in units.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    print!("{text}");
                }
                return Ok(());
            }
            let dir = dir.unwrap_or_else(|| PathBuf::from(UNIT_DIR));
            for (name, text) in &units {
                let path = install_unit(&dir, name, text)?;
                println!("wrote {}", path.display());
            }
            println!(
                "now: systemctl daemon-reload; systemctl enable --now mpath-daemon (and/or \
                 mpath-target)"
            );
            Ok(())
        }
    }
}

/// The units with `bin` for the binary: an absolute path systemd can run as it is.
pub fn units(bin: &Path) -> Result<Vec<(&'static str, String)>> {
    let s = bin
        .to_str()
        .context("the mpath binary's path is not UTF-8")?;
    if !bin.is_absolute() {
        bail!("{s:?}: systemd runs a program by its absolute path");
    }
    // Quotes, specifiers (%) and variables ($) would change what ExecStart= means.
    if s.contains(|c: char| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c)) {
        bail!("{s:?}: a unit cannot run a program whose path has spaces, quotes, % or $");
    }
    Ok(UNITS
        .iter()
        .map(|(name, text)| (*name, text.replace("@MPATH@", s)))
        .collect())
}

/// Write `dir/name` whole or not at all (a temporary file renamed over it).
fn install_unit(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Tell the service manager (`NOTIFY_SOCKET`) about a change of state; nothing when not
/// run by one. A failure to tell is logged, never fatal.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// Whether a service manager listens for notifications.
pub fn notifying() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Set once `STOPPING=1` was sent: the status says "stopping" from then on.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `STOPPING=1`, once.
pub fn notify_stopping() {
    if !STOPPING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// `RELOADING=1` with `MONOTONIC_USEC=`, as systemd wants it before a reload.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// Keep the service manager informed while the process runs: `WATCHDOG=1` every half of
/// `WATCHDOG_USEC` when the unit has a watchdog, and `STATUS=` whenever `status` (asked at
/// each tick; it should read the program's live state, so that a process whose state is
/// stuck stops pinging) says something new. Nothing when no service manager listens.
pub fn spawn_keepalive<F>(status: F)
where
    F: Fn() -> String + Send + 'static,
{
    if !notifying() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
    });
    tokio::spawn(async move {
        let mut last = String::new();
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Asked even while stopping: a stuck state stops the pings.
            let mut now = status();
            if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
                now = last.clone();
            }
            let mut states = Vec::with_capacity(2);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if now != last {
                states.push(NotifyState::Status(&now));
            }
            if !states.is_empty() {
                notify(&states);
            }
            last = now;
        }
    });
}

/// The directory systemd made for the service (`RuntimeDirectory=`, passed as
/// `RUNTIME_DIRECTORY`), where its sockets belong.
pub fn runtime_directory() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    std::env::split_paths(&dirs)
        .next()
        .filter(|d| d.is_absolute())
}

/// The control socket of the target run as `mpath-target.service`.
pub const SERVICE_TARGET_SOCKET: &str = "/run/mpath-target/mpath-target.sock";

/// A client's control socket when none was given: `default`, unless nothing listens there
/// and the service's socket exists (a root shell's `XDG_RUNTIME_DIR` is not the service's).
pub fn client_socket(default: PathBuf, service: &str) -> PathBuf {
    let service = Path::new(service);
    if !default.exists() && service.exists() {
        service.to_path_buf()
    } else {
        default
    }
}

/// Whether standard error is the journal's stream: systemd sets `JOURNAL_STREAM` to its
/// `DEVICE:INODE` (a child that inherited the variable but writes elsewhere is not).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat fills the zeroed struct it is given; fd 2 is only looked at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// Log lines for the journal (and any sd-daemon reader): no timestamp (the journal has
/// one), each line led by its syslog priority — `<3>` error, `<4>` warn, `<6>` info, `<7>`
/// debug and trace — so that `journalctl -p warning` finds the warnings.
pub struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let mut text = String::new();
        let mut w = tracing_subscriber::fmt::format::Writer::new(&mut text);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                write!(w, ": ")?;
            }
        }
        write!(w, "{}: ", event.metadata().target())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        // Every line its priority: a continuation line would otherwise be info.
        for line in text.lines() {
            writeln!(writer, "<{priority}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_the_binary_once_each() {
        for (name, text) in UNITS {
            assert_eq!(text.matches("@MPATH@").count(), 1, "{name}");
            assert!(text.contains("Type=notify\n"), "{name}");
            assert!(text.contains("KillMode=mixed\n"), "{name}");
        }
        let u = units(Path::new("/usr/local/bin/mpath")).unwrap();
        assert!(u[0]
            .1
            .contains("ExecStart=/usr/local/bin/mpath daemon -c /etc/mpath/mpath.toml\n"));
        assert!(u[1]
            .1
            .contains("ExecStart=/usr/local/bin/mpath target -c /etc/mpath/target.toml\n"));
        for bad in [
            "mpath",
            "/opt/my tools/mpath",
            "/opt/%n/mpath",
            "/opt/$X/mpath",
        ] {
            assert!(units(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_finds_the_service_socket_when_its_own_is_absent() {
        let dir = std::env::temp_dir().join(format!("mpath-svc-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join("mine.sock");
        let service = dir.join("service.sock");
        let service_s = service.to_str().unwrap();
        // Neither: the default, so that the error names it.
        assert_eq!(client_socket(mine.clone(), service_s), mine);
        std::fs::write(&service, b"").unwrap();
        assert_eq!(client_socket(mine.clone(), service_s), service);
        std::fs::write(&mine, b"").unwrap();
        assert_eq!(client_socket(mine.clone(), service_s), mine);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
