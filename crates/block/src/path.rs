//! The interface between the multipath engine and one path: an iSCSI session to one LU
//! through one portal (or, in tests, a fake).
//!
//! A path executes SCSI commands and reports what happens to it. The engine never looks
//! inside: it picks a path, submits, and acts on the [`IoErrorKind`] of a failure — `Path`:
//! fail the path and re-issue the same request elsewhere; `Target`: complete the request
//! with the error, the path is fine. Failures are pushed: a path that notices its connection
//! is dead completes every command in flight with a `Path` error at once and sends
//! [`PathEvent::Failed`] to its subscribers, without waiting for any recovery timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::{Condition, IoError};

/// The data phase of a SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPhase {
    None,
    /// Read up to `len` bytes (the ExpectedDataTransferLength).
    In {
        len: u32,
    },
    /// Write these bytes.
    Out(Bytes),
}

/// One SCSI command for a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiRequest {
    /// The CDB (6 to 16 bytes, or longer for variable-length CDBs).
    pub cdb: Bytes,
    pub data: DataPhase,
}

/// The SCSI outcome carried by an [`IoError`] that came from the target: what it means,
/// decoded once ([`Condition`]), and the status byte and sense data as received, for
/// display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiFailure {
    pub status: u8,
    /// Sense data as received (fixed or descriptor format); empty if none.
    pub sense: Bytes,
    pub condition: Condition,
}

/// Why a path failed: kept with the path and shown to operators. The variants are what the
/// transport can tell apart; `detail` says the rest (addresses, durations, messages).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathFailKind {
    /// The peer reset the TCP connection.
    ConnectionReset,
    /// The peer closed the connection (FIN) or the target asked for logout.
    ConnectionClosed,
    /// A socket error other than reset/close (unreachable, refused...).
    SocketError,
    /// An idle connection did not answer a keepalive NOP-Out in time.
    KeepaliveTimeout,
    /// Commands were outstanding and nothing at all arrived for too long (the silent
    /// blackhole), confirmed by an unanswered NOP-Out.
    Stalled,
    /// The target violated the protocol (malformed PDU, bad sequence numbers...).
    ProtocolError,
    /// Login or re-login failed (authentication, target gone...).
    LoginFailed,
    /// The target port reports ALUA standby, unavailable or offline for the LU.
    AluaInaccessible,
    /// The LU is not ready through this path (e.g. NOT READY, manual intervention).
    NotReady,
    /// A command timed out and its abort did not bring the path back.
    CommandTimeout,
    /// The path checker's I/O failed through the path (a READ the LU refuses, say) while
    /// the connection is fine.
    CheckFailed,
    /// Failed by an operator or by the daemon's checker.
    Administrative,
}

/// A path failure: what kind, and the details.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathFailReason {
    pub kind: PathFailKind,
    pub detail: String,
}

impl PathFailReason {
    pub fn new(kind: PathFailKind, detail: impl Into<String>) -> PathFailReason {
        PathFailReason {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for PathFailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathFailKind::ConnectionReset => "connection reset",
            PathFailKind::ConnectionClosed => "connection closed",
            PathFailKind::SocketError => "socket error",
            PathFailKind::KeepaliveTimeout => "keepalive timeout",
            PathFailKind::Stalled => "stalled with commands outstanding",
            PathFailKind::ProtocolError => "protocol error",
            PathFailKind::LoginFailed => "login failed",
            PathFailKind::AluaInaccessible => "ALUA state inaccessible",
            PathFailKind::NotReady => "logical unit not ready",
            PathFailKind::CommandTimeout => "command timeout",
            PathFailKind::CheckFailed => "path check failed",
            PathFailKind::Administrative => "failed by request",
        })
    }
}

impl fmt::Display for PathFailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.detail)
        }
    }
}

/// What happens to a path, pushed to subscribers as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEvent {
    /// Logged in and ready for commands.
    Connected,
    /// The path stopped working; every command in flight on it has already been (or is
    /// being) completed with a `Path` error.
    Failed { reason: PathFailReason },
    /// Re-login attempt `attempt` is scheduled in `next_try_in`; `last_failure`: why the
    /// previous connection or login failed (a wrong CHAP secret, a refused connection…),
    /// when known.
    Recovering {
        attempt: u32,
        next_try_in: Duration,
        last_failure: Option<PathFailReason>,
    },
    /// Logged in again after a failure.
    Recovered,
    /// Recovery stopped (configured attempt limit reached, or the target refuses for good).
    GaveUp { reason: PathFailReason },
    /// The target told a command to LU `lun` through this path that something about the
    /// LU changed (a UNIT ATTENTION; the path retried the command itself, as it does every
    /// UNIT ATTENTION). Not a failure: it tells whoever keeps the LU's facts — capacity,
    /// ALUA states, the LUN inventory — to read them again now rather than at its next
    /// poll. A target raises it once per I_T nexus, so each path of a LU may report it.
    LuChanged { lun: u64, change: LuChange },
}

/// What a UNIT ATTENTION said changed about a LU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LuChange {
    /// 2A/09 CAPACITY DATA HAS CHANGED: read the capacity again.
    Capacity,
    /// 2A/06 ASYMMETRIC ACCESS STATE CHANGED: read the ALUA states again.
    AccessStates,
    /// 3F/0E REPORTED LUNS DATA HAS CHANGED: ask the target for its LUNs again.
    Inventory,
}

impl fmt::Display for LuChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LuChange::Capacity => "capacity data has changed",
            LuChange::AccessStates => "asymmetric access state changed",
            LuChange::Inventory => "reported LUNs data has changed",
        })
    }
}

/// A boxed future of a path command: `Ok` carries the Data-In of a command that completed
/// with GOOD (or CONDITION MET); every other outcome is an [`IoError`] already classified.
pub type SubmitFuture = Pin<Box<dyn Future<Output = Result<Bytes, IoError>> + Send>>;

/// A function that receives path events. It is called from the path's own task and must
/// not block (send into a channel).
pub type EventSink = Box<dyn Fn(PathEvent) + Send + Sync>;

/// One path to a logical unit.
///
/// Classification of outcomes (DESIGN §4):
/// - transport failure, timeout, ALUA standby/unavailable (02/04/0b, 02/04/0c) → `Path`;
/// - ALUA transitioning (02/04/0a), BUSY, TASK SET FULL → retried by the path itself after a
///   short delay, not reported unless retries run out (then `Path`);
/// - MEDIUM ERROR, ILLEGAL REQUEST, DATA PROTECT, RESERVATION CONFLICT, MISCOMPARE and other
///   CHECK CONDITIONs → `Target`, with the status and sense in [`IoError::scsi`].
pub trait PathTransport: Send + Sync + 'static {
    /// Execute one SCSI command.
    fn submit(&self, req: ScsiRequest) -> SubmitFuture;
    /// Receive this path's events from now on.
    fn subscribe(&self, sink: EventSink);
    /// Whether the path can take commands right now (logged in, not failed).
    fn is_up(&self) -> bool;
    /// The map suspects this path: a command on it went unanswered well past the path's
    /// usual latency while another path answered the same read. A transport that can check
    /// its connection now (the iSCSI path sends its stall ping at once) does; it must not
    /// fail the path for this alone. Nothing by default.
    fn suspect(&self) {}
}
