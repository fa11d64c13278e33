//! The one place where a block error becomes an errno, for NBD replies and FUSE replies alike.

use std::fmt;

use block::{Condition, IoError, IoErrorKind};

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
        IoErrorKind::Target => match e.condition() {
            Some(Condition::DataProtect {
                space_allocation_failed: true,
            }) => Errno::ENOSPC,
            Some(Condition::DataProtect { .. }) => Errno::EPERM,
            Some(Condition::IllegalRequest {
                lba_out_of_range: true,
            }) => Errno::EINVAL,
            _ => Errno::EIO,
        },
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
        let t = |sense| errno(&IoError::from_scsi_status(0x02, sense));
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
