//! Session configuration and its defaults.

use std::net::SocketAddr;
use std::time::Duration;

use iscsi_pdu::Isid;
use iscsi_session::initiator::InitiatorConfig;
use iscsi_session::negotiate::{Digest, Proposal};
use iscsi_session::ChapCredentials;

/// Everything a session needs to log in and stay logged in.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub portal: SocketAddr,
    /// Target IQN.
    pub target: String,
    pub initiator_name: String,
    /// The session's ISID: kept across reconnections, so a re-login reinstates the session
    /// (RFC 7143 §6.3.5) and the target drops what the old connection left behind.
    pub isid: Isid,
    pub chap: Option<ChapCredentials>,
    /// Authenticate the target too (mutual CHAP): its expected name and secret.
    pub mutual_chap: Option<ChapCredentials>,
    /// What we offer in operational negotiation (digests, burst lengths...).
    pub proposal: Proposal,
    /// Keepalive, stall detection and command timeouts.
    pub timers: InitiatorConfig,
    /// TCP connect timeout. Loopback and LAN connects take microseconds; 3 s covers a
    /// lossy link's first SYN retransmission (1 s) twice.
    pub connect_timeout: Duration,
    /// Whole login exchange timeout.
    pub login_timeout: Duration,
    /// Re-login back-off: starts here, doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Give up after this many failed re-login attempts; `None`: never.
    pub max_attempts: Option<u32>,
    /// How long a new command waits for the session to recover before failing with a path
    /// error. Zero fails at once: what a multipath engine above wants, since it routes
    /// around a failed path itself.
    pub replacement_timeout: Duration,
    /// Retries of a command the target did not execute (UNIT ATTENTION), and for
    /// `IscsiPath::command`, of BUSY and ALUA transitioning.
    pub retry: RetryPolicy,
}

/// How commands the target could not take right now are retried on the same path.
///
/// Through the multipath engine only `unit_attention_attempts` applies: the engine owns
/// BUSY and transitioning (its `busy_timeout`, `alua_transition_timeout`). The rest is for
/// [`IscsiPath::command`](crate::IscsiPath::command), whose callers have no engine.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// UNIT ATTENTION, TASK ABORTED: the command was not executed; resend at once, this many
    /// times (a nexus can have several attentions queued).
    pub unit_attention_attempts: u32,
    /// BUSY / TASK SET FULL / ABORTED COMMAND: retried with a back-off of 10 ms doubling to
    /// 100 ms for this long.
    pub busy_timeout: Duration,
    /// ALUA transitioning or "becoming ready": delay and how long in total. SPC-4 lets a
    /// transition take as long as the target's IMPLICIT TRANSITION TIME; 10 s covers the
    /// arrays we know.
    pub transition_delay: Duration,
    pub transition_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            unit_attention_attempts: 8,
            busy_timeout: Duration::from_secs(30),
            transition_delay: Duration::from_millis(100),
            transition_timeout: Duration::from_secs(10),
        }
    }
}

impl SessionConfig {
    /// A session with mpath's defaults: no authentication, no digests, a random ISID.
    pub fn new(portal: SocketAddr, target: impl Into<String>) -> SessionConfig {
        SessionConfig {
            portal,
            target: target.into(),
            initiator_name: default_initiator_name(),
            isid: random_isid(),
            chap: None,
            mutual_chap: None,
            proposal: Proposal::initiator(),
            timers: InitiatorConfig::default(),
            connect_timeout: Duration::from_secs(3),
            login_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            max_attempts: None,
            replacement_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// Offer CRC32C header and data digests (and accept None if the target refuses).
    pub fn with_digests(mut self, header: bool, data: bool) -> SessionConfig {
        let pick = |on: bool| {
            if on {
                vec![Digest::Crc32c, Digest::None]
            } else {
                vec![Digest::None]
            }
        };
        self.proposal.header_digest = pick(header);
        self.proposal.data_digest = pick(data);
        self
    }
}

/// Where open-iscsi keeps this host's initiator name (`InitiatorName=iqn...`).
pub const OPEN_ISCSI_INITIATOR_NAME_FILE: &str = "/etc/iscsi/initiatorname.iscsi";

/// This host's initiator name: open-iscsi's, from `/etc/iscsi/initiatorname.iscsi`, when
/// that file names one (targets' ACLs are written for it); else
/// `iqn.2026-01.io.mpath:<hostname>`, stable per host as an initiator name should be. A file
/// that is there but unreadable or malformed is warned about (once) and passed over.
pub fn default_initiator_name() -> String {
    initiator_name_from(std::path::Path::new(OPEN_ISCSI_INITIATOR_NAME_FILE))
}

/// [`default_initiator_name`] with open-iscsi's file at `file`.
pub fn initiator_name_from(file: &std::path::Path) -> String {
    match read_initiator_name_file(file) {
        Ok(Some(name)) => return name,
        Ok(None) => {}
        Err(e) => {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "{}: {e}; using the initiator name {} instead",
                    file.display(),
                    hostname_initiator_name()
                );
            }
        }
    }
    hostname_initiator_name()
}

/// The name in open-iscsi's initiator name file: `Ok(None)` when there is no such file,
/// an error when the file cannot be read or names no valid initiator. The format is
/// open-iscsi's: `InitiatorName=NAME` on a line, `#` starts a comment line, other keys
/// (`InitiatorAlias=`) are ignored.
pub fn read_initiator_name_file(file: &std::path::Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    // As iscsid reads it: the first InitiatorName line counts, every other line is
    // ignored.
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "InitiatorName" {
            continue;
        }
        let value = value.trim();
        confkit::check_name(value).map_err(|m| format!("line {}: InitiatorName: {m}", n + 1))?;
        return Ok(Some(value.to_string()));
    }
    Err("no InitiatorName= line".to_string())
}

/// `iqn.2026-01.io.mpath:<hostname>`.
fn hostname_initiator_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("iqn.2026-01.io.mpath:{host}")
}

/// The ISID of the session from `initiator` to `target` through `portal`: the same in every
/// process, on every version of this program. A daemon that restarts (after a crash, or as a
/// new binary) then logs in with the ISID of its predecessor's session, and the target
/// *reinstates* it (RFC 7143 §6.3.5): it ends the old session and its tasks before it admits
/// the new one — so a write the dead process had sent cannot land after the writes of the new
/// one. Format "random" (T = 10b); the 62 bits are FNV-1a over the three names, a hash fixed
/// here rather than std's, whose output may change between Rust releases.
pub fn stable_isid(initiator: &str, target: &str, portal: std::net::SocketAddr) -> Isid {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for part in [initiator, target, &portal.to_string()] {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    let mut b = [0u8; 6];
    b.copy_from_slice(&h.to_be_bytes()[2..]);
    b[0] = 0x80 | (b[0] & 0x3f);
    Isid(b)
}

/// A "random" format ISID (RFC 7143 §11.12.5: T = 10b), different for every session.
pub fn random_isid() -> Isid {
    let mut b = [0u8; 6];
    if getrandom::getrandom(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        b.copy_from_slice(&t.to_be_bytes()[2..]);
    }
    b[0] = 0x80 | (b[0] & 0x3f);
    Isid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_isids_are_stable_random_format_and_per_path() {
        let a: std::net::SocketAddr = "198.18.1.2:3260".parse().unwrap();
        let b: std::net::SocketAddr = "198.18.2.2:3260".parse().unwrap();
        let i = stable_isid("iqn.2026-01.io.mpath:host1", "iqn.t:x", a);
        assert_eq!(i, stable_isid("iqn.2026-01.io.mpath:host1", "iqn.t:x", a));
        // Fixed across releases: a restarted or upgraded daemon must find it again.
        assert_eq!(i.to_string(), "0x86868deee105");
        assert_eq!(i.0[0] & 0xc0, 0x80, "T = 10b: random format");
        assert_ne!(i, stable_isid("iqn.2026-01.io.mpath:host1", "iqn.t:x", b));
        assert_ne!(i, stable_isid("iqn.2026-01.io.mpath:host1", "iqn.t:y", a));
        assert_ne!(i, stable_isid("iqn.2026-01.io.mpath:host2", "iqn.t:x", a));
    }

    fn name_file(tag: &str, text: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mpath-initiatorname-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("initiatorname.iscsi");
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn open_iscsi_names_the_initiator() {
        let file = name_file(
            "good",
            "## DO NOT EDIT OR REMOVE THIS FILE!\n\
             # InitiatorName=iqn.2000-01.commented:out\n\
             \n\
             InitiatorName=iqn.1993-08.org.debian:01:5f3a9c2d7e1b\n\
             InitiatorAlias=host1\n",
        );
        assert_eq!(
            read_initiator_name_file(&file).unwrap().as_deref(),
            Some("iqn.1993-08.org.debian:01:5f3a9c2d7e1b")
        );
        assert_eq!(
            initiator_name_from(&file),
            "iqn.1993-08.org.debian:01:5f3a9c2d7e1b"
        );
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_or_malformed_file_falls_back_to_the_host_name() {
        let fallback = hostname_initiator_name();
        assert!(fallback.starts_with("iqn.2026-01.io.mpath:"), "{fallback}");
        let missing = std::path::Path::new("/nonexistent/initiatorname.iscsi");
        assert_eq!(read_initiator_name_file(missing), Ok(None));
        assert_eq!(initiator_name_from(missing), fallback);

        let bad = name_file("bad", "InitiatorName=my host\n");
        let e = read_initiator_name_file(&bad).unwrap_err();
        assert!(
            e.contains("line 1: InitiatorName") && e.contains("not an iSCSI name"),
            "{e}"
        );
        assert_eq!(initiator_name_from(&bad), fallback);
        std::fs::remove_dir_all(bad.parent().unwrap()).unwrap();

        // Debian's file before iscsid generated a name.
        let empty = name_file("unnamed", "GenerateName=yes\n");
        assert_eq!(
            read_initiator_name_file(&empty),
            Err("no InitiatorName= line".to_string())
        );
        assert_eq!(initiator_name_from(&empty), fallback);
        std::fs::remove_dir_all(empty.parent().unwrap()).unwrap();
    }
}
