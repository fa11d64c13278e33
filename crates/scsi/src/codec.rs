//! Big-endian field access shared by every parser and builder in the crate.
//!
//! SCSI structures are big-endian and fixed-offset; readers return `None`
//! instead of panicking when a field lies beyond the end of a peer's buffer,
//! which is what makes every parser in this crate total.

/// Read one byte at `at`, `None` when out of range.
#[inline]
pub(crate) fn u8_at(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[inline]
pub(crate) fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// Infallible reads for CDB parsing, where the caller has already checked
/// that the CDB is at least as long as the command's fixed CDB length.
#[inline]
pub(crate) fn cdb16(c: &[u8], at: usize) -> u16 {
    be16(c, at).unwrap_or(0)
}

#[inline]
pub(crate) fn cdb32(c: &[u8], at: usize) -> u32 {
    be32(c, at).unwrap_or(0)
}

#[inline]
pub(crate) fn cdb64(c: &[u8], at: usize) -> u64 {
    be64(c, at).unwrap_or(0)
}

#[inline]
pub(crate) fn cdb8(c: &[u8], at: usize) -> u8 {
    u8_at(c, at).unwrap_or(0)
}

/// Appending big-endian writers for building data-in buffers.
pub(crate) trait PutBe {
    fn put_u16(&mut self, v: u16);
    fn put_u24(&mut self, v: u32);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_zeros(&mut self, n: usize);
}

impl PutBe for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u24(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes()[1..]);
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// Overwrite a big-endian u16 at `at` (used to patch length fields after
/// the body is built). Out-of-range positions are ignored.
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

pub(crate) fn set_be32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Append `s` as a fixed-width ASCII field, space padded and truncated, as
/// SPC requires for T10 VENDOR IDENTIFICATION and friends. Bytes outside the
/// printable ASCII range are replaced by spaces (SPC-4 4.3.1).
pub(crate) fn put_ascii_padded(out: &mut Vec<u8>, s: &str, width: usize) {
    let mut n = 0;
    for &c in s.as_bytes().iter().take(width) {
        out.push(if (0x20..=0x7e).contains(&c) { c } else { b' ' });
        n += 1;
    }
    out.resize(out.len() + (width - n), b' ');
}

/// Decode an ASCII field, dropping trailing spaces and NULs.
pub(crate) fn ascii_trimmed(b: &[u8]) -> String {
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |p| p + 1);
    b[..end]
        .iter()
        .map(|&c| {
            if (0x20..=0x7e).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Round `n` up to a multiple of 4 (designators and TransportIDs are padded
/// to 4-byte multiples).
#[inline]
pub(crate) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Truncate a built data-in buffer to the CDB's ALLOCATION LENGTH: SPC-4
/// 4.2.5.6 — the device server transfers at most that many bytes and the
/// transport reports the rest as residual.
#[inline]
pub(crate) fn truncate_to(mut v: Vec<u8>, alloc_len: u32) -> Vec<u8> {
    let n = usize::try_from(alloc_len).unwrap_or(usize::MAX);
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let b = [1u8, 2, 3];
        assert_eq!(be16(&b, 1), Some(0x0203));
        assert_eq!(be16(&b, 2), None);
        assert_eq!(be32(&b, 0), None);
        assert_eq!(be64(&b, usize::MAX), None);
    }

    #[test]
    fn ascii_padding() {
        let mut v = Vec::new();
        put_ascii_padded(&mut v, "MPATH\u{1}", 8);
        assert_eq!(&v, b"MPATH   ");
        assert_eq!(ascii_trimmed(b"ab  \0"), "ab");
        assert_eq!(pad4(5), 8);
        assert_eq!(pad4(8), 8);
    }
}
