//! READ CAPACITY (10) and (16) parameter data (SBC-3 5.16, 5.17).

use crate::codec::{be16, be32, be64, PutBe};
use crate::error::{need, DecodeError};

/// READ CAPACITY (10) data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadCapacity10Data {
    /// RETURNED LOGICAL BLOCK ADDRESS: the last LBA, or 0xffff_ffff when it
    /// does not fit and READ CAPACITY (16) must be used.
    pub last_lba: u32,
    pub block_len: u32,
}

impl ReadCapacity10Data {
    /// From the capacity in blocks (SBC-3: saturates at 0xffff_ffff).
    pub fn new(capacity_blocks: u64, block_len: u32) -> ReadCapacity10Data {
        let last = capacity_blocks.saturating_sub(1);
        ReadCapacity10Data {
            last_lba: u32::try_from(last).unwrap_or(u32::MAX),
            block_len,
        }
    }

    pub fn build(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.last_lba.to_be_bytes());
        b[4..].copy_from_slice(&self.block_len.to_be_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Result<ReadCapacity10Data, DecodeError> {
        need(b, 8)?;
        Ok(ReadCapacity10Data {
            last_lba: be32(b, 0).unwrap_or(0),
            block_len: be32(b, 4).unwrap_or(0),
        })
    }
}

/// Length of READ CAPACITY (16) parameter data.
pub const READ_CAPACITY_16_LEN: usize = 32;

/// READ CAPACITY (16) data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadCapacity16Data {
    pub last_lba: u64,
    pub block_len: u32,
    pub p_type: u8,
    pub prot_en: bool,
    pub p_i_exponent: u8,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
    pub lbppbe: u8,
    /// Logical block provisioning management enabled (thin provisioning).
    pub lbpme: bool,
    /// Unmapped blocks read as zeroes.
    pub lbprz: bool,
    pub lowest_aligned_lba: u16,
}

impl ReadCapacity16Data {
    pub fn build(&self) -> [u8; READ_CAPACITY_16_LEN] {
        let mut v = Vec::with_capacity(READ_CAPACITY_16_LEN);
        v.put_u64(self.last_lba);
        v.put_u32(self.block_len);
        v.push(((self.p_type & 0x07) << 1) | u8::from(self.prot_en));
        v.push(((self.p_i_exponent & 0x0f) << 4) | (self.lbppbe & 0x0f));
        v.put_u16(
            (u16::from(self.lbpme) << 15)
                | (u16::from(self.lbprz) << 14)
                | (self.lowest_aligned_lba & 0x3fff),
        );
        v.resize(READ_CAPACITY_16_LEN, 0);
        let mut b = [0u8; READ_CAPACITY_16_LEN];
        b.copy_from_slice(&v);
        b
    }

    /// Needs the first 12 bytes; flags missing from shorter data read as 0.
    pub fn parse(b: &[u8]) -> Result<ReadCapacity16Data, DecodeError> {
        need(b, 12)?;
        let f = b.get(12).copied().unwrap_or(0);
        let e = b.get(13).copied().unwrap_or(0);
        let w = be16(b, 14).unwrap_or(0);
        Ok(ReadCapacity16Data {
            last_lba: be64(b, 0).unwrap_or(0),
            block_len: be32(b, 8).unwrap_or(0),
            p_type: (f >> 1) & 0x07,
            prot_en: f & 0x01 != 0,
            p_i_exponent: e >> 4,
            lbppbe: e & 0x0f,
            lbpme: w & 0x8000 != 0,
            lbprz: w & 0x4000 != 0,
            lowest_aligned_lba: w & 0x3fff,
        })
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.last_lba.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixtures() {
        let rc = ReadCapacity10Data::new(0x1_0000_0001, 512);
        assert_eq!(rc.build(), [0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]);
        let rc = ReadCapacity10Data::new(2048, 4096);
        assert_eq!(rc.build(), [0, 0, 0x07, 0xff, 0, 0, 0x10, 0]);
        let rc16 = ReadCapacity16Data {
            last_lba: 2047,
            block_len: 512,
            lbpme: true,
            lbprz: true,
            ..Default::default()
        };
        let b = rc16.build();
        assert_eq!(
            &b[..16],
            &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0, 0, 0, 0xc0, 0]
        );
        assert_eq!(ReadCapacity16Data::parse(&b), Ok(rc16));
        assert_eq!(rc16.blocks(), 2048);
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ReadCapacity10Data::parse(&b);
            let _ = ReadCapacity16Data::parse(&b);
        }

        #[test]
        fn rc16_round_trip(lba in any::<u64>(), bl in any::<u32>(), pt in 0u8..8, pe in any::<bool>(),
                           pie in 0u8..16, lbppbe in 0u8..16, lbpme in any::<bool>(), lbprz in any::<bool>(),
                           la in 0u16..0x4000) {
            let d = ReadCapacity16Data { last_lba: lba, block_len: bl, p_type: pt, prot_en: pe,
                p_i_exponent: pie, lbppbe, lbpme, lbprz, lowest_aligned_lba: la };
            prop_assert_eq!(ReadCapacity16Data::parse(&d.build()), Ok(d));
        }

        #[test]
        fn rc10_round_trip(lba in any::<u32>(), bl in any::<u32>()) {
            let d = ReadCapacity10Data { last_lba: lba, block_len: bl };
            prop_assert_eq!(ReadCapacity10Data::parse(&d.build()), Ok(d));
        }
    }
}
