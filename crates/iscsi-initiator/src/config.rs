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
    /// Retries of a command the target answered BUSY, TASK SET FULL, UNIT ATTENTION or ALUA
    /// transitioning before it counts as a path error.
    pub retry: RetryPolicy,
}

/// How commands the target could not take right now are retried on the same path.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// BUSY / TASK SET FULL: delay between attempts and how many.
    pub busy_delay: Duration,
    pub busy_attempts: u32,
    /// ALUA transitioning or "becoming ready": delay and how long in total. SPC-4 lets a
    /// transition take as long as the target's IMPLICIT TRANSITION TIME; 10 s covers the
    /// arrays we know.
    pub transition_delay: Duration,
    pub transition_max: Duration,
    /// UNIT ATTENTION: the command was not executed; resend at once, this many times (a
    /// nexus can have several attentions queued).
    pub unit_attention_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            busy_delay: Duration::from_millis(10),
            busy_attempts: 50,
            transition_delay: Duration::from_millis(100),
            transition_max: Duration::from_secs(10),
            unit_attention_attempts: 8,
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

/// `iqn.2026-01.io.mpath:<hostname>`: stable per host, as an initiator name should be.
pub fn default_initiator_name() -> String {
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
