//! Block-device vocabulary shared by every layer of mpath.
//!
//! Pure: no I/O, no runtime. The exports (NBD, FUSE) consume [`BlockDevice`]; the multipath
//! engine implements it and drives [`PathTransport`]s; errors carry an [`IoErrorKind`] that says what the
//! layer above should do next (DESIGN §4):
//!
//! | kind | meaning | what the caller does |
//! |---|---|---|
//! | `Path` | the path failed (transport, timeout, ALUA standby/unavailable) | retry the same request elsewhere |
//! | `Target` | the storage answered with an error (MEDIUM ERROR, ILLEGAL REQUEST…) | fail it up; no path is at fault |
//! | `NoPath` | no usable path is left | queue or fail per policy |
//! | `Invalid` | the request itself is wrong (out of range, misaligned) | fail it up |

mod outcome;
mod path;

use std::fmt;
use std::future::Future;

use bytes::Bytes;

pub use outcome::{busy_delay, status, Condition, ConditionClass};
pub use path::{
    DataPhase, EventSink, LuChange, PathEvent, PathFailKind, PathFailReason, PathTransport,
    ScsiFailure, ScsiRequest, SubmitFuture,
};

/// A logical block address, in units of the device's logical block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lba(pub u64);

/// A number of logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockCount(pub u64);

/// A byte offset on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteOffset(pub u64);

impl Lba {
    pub fn to_bytes(self, block_size: u32) -> ByteOffset {
        ByteOffset(self.0 * block_size as u64)
    }
}

impl ByteOffset {
    /// The block holding this offset, if it is block-aligned.
    pub fn to_lba(self, block_size: u32) -> Option<Lba> {
        self.0
            .is_multiple_of(block_size as u64)
            .then(|| Lba(self.0 / block_size as u64))
    }
}

/// One block operation, as the exports submit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOp {
    Read {
        offset: ByteOffset,
        len: u32,
    },
    /// `fua`: the data is on stable storage when the write completes.
    Write {
        offset: ByteOffset,
        data: Bytes,
        fua: bool,
    },
    /// Everything completed before it is on stable storage.
    Flush,
    /// The range may be deallocated; reads afterwards return zeroes or old data.
    Discard {
        offset: ByteOffset,
        len: u64,
    },
    /// The range reads back as zeroes; `may_unmap` allows deallocating it.
    WriteZeroes {
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    },
}

impl BlockOp {
    /// Bytes this operation moves over the wire (selectors weigh paths by it).
    pub fn transfer_len(&self) -> u64 {
        match self {
            BlockOp::Read { len, .. } => *len as u64,
            BlockOp::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, BlockOp::Read { .. })
    }
}

/// A successful completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Data of a read.
    Data(Bytes),
    /// A write, flush, discard or write-zeroes completed.
    Done,
}

/// What an error means to the layer above (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    Path,
    Target,
    NoPath,
    Invalid,
}

impl fmt::Display for IoErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoErrorKind::Path => "path error",
            IoErrorKind::Target => "target error",
            IoErrorKind::NoPath => "no usable path",
            IoErrorKind::Invalid => "invalid request",
        })
    }
}

/// A failed block operation: its kind and a human-readable reason with context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoError {
    pub kind: IoErrorKind,
    pub detail: String,
    /// The SCSI status and sense, when the error came from the target.
    pub scsi: Option<ScsiFailure>,
    /// For a `Path` error the transport raised itself (no SCSI status): why the path
    /// failed, when the transport knows — the same kind its `PathEvent::Failed` carries.
    /// The multipath engine records it as the path's failure kind; without it the kind
    /// is inferred (a socket error) until the transport's event says better.
    pub path_fail: Option<PathFailKind>,
}

impl IoError {
    pub fn new(kind: IoErrorKind, detail: impl Into<String>) -> IoError {
        IoError {
            kind,
            detail: detail.into(),
            scsi: None,
            path_fail: None,
        }
    }

    /// An error the target reported with this status and sense: decoded here, once, into
    /// its [`Condition`], which also gives the error's kind.
    pub fn scsi(detail: impl Into<String>, status: u8, sense: Bytes) -> IoError {
        let condition = Condition::decode(status, &sense);
        IoError {
            kind: condition.kind(),
            detail: detail.into(),
            scsi: Some(ScsiFailure {
                status,
                sense,
                condition,
            }),
            path_fail: None,
        }
    }

    /// The error of a command the target answered with this status (not GOOD) and sense:
    /// decoded once into its [`Condition`] and kind, described as the standard names it.
    pub fn from_scsi_status(status: u8, sense: Bytes) -> IoError {
        let (condition, detail) = Condition::decode_described(status, &sense);
        IoError {
            kind: condition.kind(),
            detail,
            scsi: Some(ScsiFailure {
                status,
                sense,
                condition,
            }),
            path_fail: None,
        }
    }

    /// What the target's answer meant, when the error came from the target.
    pub fn condition(&self) -> Option<Condition> {
        self.scsi.as_ref().map(|s| s.condition)
    }

    /// A `Path` error because the path failed in this way (connection reset, keepalive
    /// timeout, stall...): what a transport completes its commands with when it knows why
    /// its connection is gone.
    pub fn path_failed(kind: PathFailKind, detail: impl Into<String>) -> IoError {
        IoError::new(IoErrorKind::Path, detail).with_path_fail(kind)
    }

    /// This error, saying how the path failed (see [`IoError::path_fail`]).
    pub fn with_path_fail(mut self, kind: PathFailKind) -> IoError {
        self.path_fail = Some(kind);
        self
    }

    /// The path failure this error reports, when the transport said which.
    pub fn path_fail_reason(&self) -> Option<PathFailReason> {
        self.path_fail
            .clone()
            .map(|kind| PathFailReason::new(kind, self.detail.clone()))
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path_fail {
            Some(why) => write!(f, "{}: {why}: {}", self.kind, self.detail),
            None => write!(f, "{}: {}", self.kind, self.detail),
        }
    }
}

impl std::error::Error for IoError {}

/// Static facts about a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Capacity in bytes.
    pub size: u64,
    /// Logical block size (512 or 4096).
    pub block_size: u32,
    /// Physical block size: the smallest write the medium does without a read-modify-write
    /// (READ CAPACITY(16)'s LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT); equal to
    /// `block_size` when the LU reports nothing larger.
    pub physical_block_size: u32,
    /// Largest single transfer the device accepts, in bytes.
    pub max_transfer: u32,
    pub supports_discard: bool,
    pub supports_write_zeroes: bool,
    /// The device has a volatile write cache: FLUSH and FUA mean something.
    pub volatile_write_cache: bool,
}

/// What the exports consume: a device that takes block operations.
pub trait BlockDevice: Send + Sync {
    fn info(&self) -> DeviceInfo;
    fn submit(&self, op: BlockOp) -> impl Future<Output = Result<Outcome, IoError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(Lba(3).to_bytes(512), ByteOffset(1536));
        assert_eq!(ByteOffset(4096).to_lba(4096), Some(Lba(1)));
        assert_eq!(ByteOffset(100).to_lba(512), None);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = IoError::new(IoErrorKind::Path, "connection reset by 127.0.0.2:3260");
        assert_eq!(
            e.to_string(),
            "path error: connection reset by 127.0.0.2:3260"
        );
        assert_eq!(e.path_fail, None);
        assert_eq!(IoError::scsi("x", 2, Bytes::new()).path_fail, None);
    }

    #[test]
    fn path_errors_can_say_how_the_path_failed() {
        let e = IoError::path_failed(PathFailKind::KeepaliveTimeout, "10.0.0.1:3260: 1 s");
        assert_eq!(e.kind, IoErrorKind::Path);
        assert_eq!(
            e.to_string(),
            "path error: keepalive timeout: 10.0.0.1:3260: 1 s"
        );
        assert_eq!(
            e.path_fail_reason(),
            Some(PathFailReason::new(
                PathFailKind::KeepaliveTimeout,
                "10.0.0.1:3260: 1 s"
            ))
        );
        let e =
            IoError::new(IoErrorKind::Path, "reset").with_path_fail(PathFailKind::ConnectionReset);
        assert_eq!(e.path_fail, Some(PathFailKind::ConnectionReset));
    }
}
