//! mpath's iSCSI initiator.
//!
//! A [`Session`] logs in to one target through one portal and keeps itself logged in: a
//! supervisor task drives `iscsi_session::initiator::InitiatorConnection` over TCP, detects
//! dead connections (socket errors at once; silence with commands outstanding within
//! ~350 ms; idle keepalive 1 s/1 s), completes every in-flight command with a path error the
//! moment the connection fails, and re-logs in with back-off (0.2 s doubling to 5 s),
//! reinstating the session. Every step is a [`block::PathEvent`] with its reason.
//!
//! [`IscsiPath`] is one LU through one session, as the multipath engine sees it
//! ([`block::PathTransport`]). [`discover`] runs SendTargets; [`probe`] asks a LU what it is.

mod classify;
mod config;
mod connect;
mod discovery;
mod lag;
mod path;
pub mod probe;
mod session;

pub use classify::{classify, Verdict};
pub use config::{default_initiator_name, random_isid, stable_isid, RetryPolicy, SessionConfig};
pub use connect::LoginError;
pub use discovery::{
    discover, parse_send_targets, DiscoveredPortal, DiscoveredTarget, DiscoveryConfig,
};
pub use iscsi_session::initiator::{
    Command, CommandError, CommandResponse, DataDir, InitiatorConfig,
};
pub use iscsi_session::ChapCredentials;
pub use path::IscsiPath;
pub use session::{Negotiated, Session, SessionError, SessionState, SessionStats};
