//! CRC32C header and data digests (RFC 7143 §13.1, `HeaderDigest` / `DataDigest` = CRC32C).
//!
//! The digest is carried on the wire in little-endian byte order: the CRC register value
//! is sent least significant byte first, which is what RFC 7143 Appendix B's examples show.

/// Which digests a connection negotiated. Both default to off (`None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// `HeaderDigest=CRC32C`: 4 bytes after the BHS and AHS.
    pub header: bool,
    /// `DataDigest=CRC32C`: 4 bytes after the padded data segment.
    pub data: bool,
}

impl Digests {
    /// No digests: the state of every connection until login completes.
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
}

/// CRC32C of `bytes`, as put on the wire.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C over the data segment followed by its zero padding to a multiple of 4 bytes.
pub fn data_crc32c(data: &[u8], pad: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    crc32c::crc32c_append(c, pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7143 Appendix B.4: 32 bytes of zeroes.
    #[test]
    fn rfc_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
    }
}
