//! The one place where a block error becomes an errno, for NBD replies and FUSE replies alike.

use std::fmt;

use block::{IoError, IoErrorKind};

/// A POSIX error number as both protocols send it. The values the NBD protocol allows
/// (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ESHUTDOWN) are Linux's numbers, so one type
/// serves both; [`errno`] only ever produces those.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    pub const ESHUTDOWN: Errno = Errno(libc::ESHUTDOWN);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Errno::EPERM => "EPERM",
            Errno::EIO => "EIO",
            Errno::ENOMEM => "ENOMEM",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::EOVERFLOW => "EOVERFLOW",
            Errno::ESHUTDOWN => "ESHUTDOWN",
            _ => return write!(f, "errno {}", self.0),
        };
        f.write_str(name)
    }
}

/// SPC sense keys and additional sense codes that change the errno (SPC-4 §4.5.6, annex D).
const SENSE_KEY_ILLEGAL_REQUEST: u8 = 0x05;
const SENSE_KEY_DATA_PROTECT: u8 = 0x07;
/// ASC 0x21: LOGICAL BLOCK ADDRESS OUT OF RANGE.
const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
/// ASC/ASCQ 0x27/0x07: SPACE ALLOCATION FAILED WRITE PROTECT (a thin LU out of space).
const ASC_WRITE_PROTECTED: u8 = 0x27;
const ASCQ_SPACE_ALLOCATION_FAILED: u8 = 0x07;

/// The errno a host sees for a failed block operation.
///
/// | kind | errno | why |
/// |---|---|---|
/// | `Invalid` | EINVAL | the request itself is wrong (out of range, misaligned) |
/// | `Target` | EIO; ENOSPC for a thin LU out of space; EPERM for a write-protected LU; EINVAL for an LBA out of range | the storage answered with an error |
/// | `NoPath` | EIO | the engine's no-path queueing gave up |
/// | `Path` | EIO | should not reach an export: the engine retries path errors elsewhere |
pub fn errno(e: &IoError) -> Errno {
    match e.kind {
        IoErrorKind::Invalid => Errno::EINVAL,
        IoErrorKind::NoPath | IoErrorKind::Path => Errno::EIO,
        IoErrorKind::Target => match e.scsi.as_ref().and_then(|s| sense_key_asc(&s.sense)) {
            Some((SENSE_KEY_DATA_PROTECT, ASC_WRITE_PROTECTED, ASCQ_SPACE_ALLOCATION_FAILED)) => {
                Errno::ENOSPC
            }
            Some((SENSE_KEY_DATA_PROTECT, _, _)) => Errno::EPERM,
            Some((SENSE_KEY_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, _)) => Errno::EINVAL,
            _ => Errno::EIO,
        },
    }
}

/// Sense key, ASC and ASCQ of fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
fn sense_key_asc(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first().map(|b| b & 0x7f)? {
        0x70 | 0x71 => Some((sense.get(2)? & 0x0f, *sense.get(12)?, *sense.get(13)?)),
        0x72 | 0x73 => Some((sense.get(1)? & 0x0f, *sense.get(2)?, *sense.get(3)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fixed(key: u8, asc: u8, ascq: u8) -> Bytes {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        Bytes::from(s)
    }

    #[test]
    fn kinds() {
        assert_eq!(
            errno(&IoError::new(IoErrorKind::Invalid, "x")),
            Errno::EINVAL
        );
        assert_eq!(errno(&IoError::new(IoErrorKind::NoPath, "x")), Errno::EIO);
        assert_eq!(errno(&IoError::new(IoErrorKind::Path, "x")), Errno::EIO);
        assert_eq!(errno(&IoError::new(IoErrorKind::Target, "x")), Errno::EIO);
    }

    #[test]
    fn sense_refines_target_errors() {
        let t = |sense| errno(&IoError::scsi(IoErrorKind::Target, "x", 0x02, sense));
        assert_eq!(t(fixed(0x07, 0x27, 0x07)), Errno::ENOSPC);
        assert_eq!(t(fixed(0x07, 0x27, 0x00)), Errno::EPERM);
        assert_eq!(t(fixed(0x05, 0x21, 0x00)), Errno::EINVAL);
        assert_eq!(t(fixed(0x03, 0x11, 0x00)), Errno::EIO);
        assert_eq!(
            t(Bytes::from_static(&[0x72, 0x07, 0x27, 0x07, 0, 0, 0, 0])),
            Errno::ENOSPC
        );
        assert_eq!(t(Bytes::from_static(&[0x70])), Errno::EIO);
        assert_eq!(t(Bytes::new()), Errno::EIO);
    }

    #[test]
    fn display() {
        assert_eq!(Errno::ENOSPC.to_string(), "ENOSPC");
        assert_eq!(Errno(2).to_string(), "errno 2");
    }
}
