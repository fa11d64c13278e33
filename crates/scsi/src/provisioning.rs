//! Logical block provisioning data: the UNMAP parameter list (SBC-3 5.28)
//! and GET LBA STATUS parameter data (SBC-3 5.5).

use crate::codec::{be16, be32, be64, set_be32, PutBe};
use crate::error::{need, DecodeError, ParamError};

/// Size of the UNMAP parameter list header.
const UNMAP_HEADER_LEN: usize = 8;
/// Size of one UNMAP block descriptor.
const UNMAP_DESCRIPTOR_LEN: usize = 16;

/// UNMAP parameter list: (LBA, NUMBER OF LOGICAL BLOCKS) descriptors.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UnmapParams {
    pub descriptors: Vec<(u64, u32)>,
}

impl UnmapParams {
    pub fn build(&self) -> Vec<u8> {
        let n = UNMAP_HEADER_LEN + UNMAP_DESCRIPTOR_LEN * self.descriptors.len();
        let mut v = Vec::with_capacity(n);
        v.put_u16((n - 2) as u16);
        v.put_u16((n - UNMAP_HEADER_LEN) as u16);
        v.put_zeros(4);
        for &(lba, blocks) in &self.descriptors {
            v.put_u64(lba);
            v.put_u32(blocks);
            v.put_zeros(4);
        }
        v
    }

    /// Parse per SBC-3 5.28.2. An empty list (PARAMETER LIST LENGTH zero)
    /// is valid and unmaps nothing; a list of 1 to 7 bytes is a length
    /// error; an incomplete trailing descriptor is ignored.
    pub fn parse(b: &[u8]) -> Result<UnmapParams, ParamError> {
        if b.is_empty() {
            return Ok(UnmapParams::default());
        }
        if b.len() < UNMAP_HEADER_LEN {
            return Err(ParamError::LengthError);
        }
        let data_len = usize::from(be16(b, 0).unwrap_or(0));
        let bd_len = usize::from(be16(b, 2).unwrap_or(0));
        // UNMAP DATA LENGTH counts the bytes after itself; the descriptors
        // must fit both in the list and in what it declares.
        if data_len + 2 < UNMAP_HEADER_LEN + bd_len {
            return Err(ParamError::at(0));
        }
        let usable = bd_len.min(b.len() - UNMAP_HEADER_LEN);
        let count = usable / UNMAP_DESCRIPTOR_LEN;
        let descriptors = (0..count)
            .map(|i| {
                let at = UNMAP_HEADER_LEN + UNMAP_DESCRIPTOR_LEN * i;
                (be64(b, at).unwrap_or(0), be32(b, at + 8).unwrap_or(0))
            })
            .collect();
        Ok(UnmapParams { descriptors })
    }
}

/// PROVISIONING STATUS of an LBA status descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ProvisioningStatus(pub u8);

impl ProvisioningStatus {
    pub const MAPPED: ProvisioningStatus = ProvisioningStatus(0x0);
    pub const DEALLOCATED: ProvisioningStatus = ProvisioningStatus(0x1);
    pub const ANCHORED: ProvisioningStatus = ProvisioningStatus(0x2);
}

/// One LBA status descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LbaStatusDescriptor {
    pub lba: u64,
    pub blocks: u32,
    pub status: ProvisioningStatus,
}

/// GET LBA STATUS parameter data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct LbaStatus {
    pub descriptors: Vec<LbaStatusDescriptor>,
}

impl LbaStatus {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 16 * self.descriptors.len());
        v.put_u32(0); // PARAMETER DATA LENGTH, patched below
        v.put_zeros(4);
        for d in &self.descriptors {
            v.put_u64(d.lba);
            v.put_u32(d.blocks);
            v.push(d.status.0 & 0x0f);
            v.put_zeros(3);
        }
        let n = (v.len() - 4) as u32;
        set_be32(&mut v, 0, n);
        v
    }

    /// Lenient: descriptors cut by the allocation length are dropped.
    pub fn parse(b: &[u8]) -> Result<LbaStatus, DecodeError> {
        need(b, 8)?;
        let end = b
            .len()
            .min(4usize.saturating_add(be32(b, 0).unwrap_or(0) as usize));
        let mut descriptors = Vec::new();
        let mut at = 8;
        while at + 16 <= end {
            descriptors.push(LbaStatusDescriptor {
                lba: be64(b, at).unwrap_or(0),
                blocks: be32(b, at + 8).unwrap_or(0),
                status: ProvisioningStatus(b[at + 12] & 0x0f),
            });
            at += 16;
        }
        Ok(LbaStatus { descriptors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::set_be16;
    use proptest::prelude::*;

    fn set_unmap_lengths(b: &mut [u8], data_len: u16, bd_len: u16) {
        set_be16(b, 0, data_len);
        set_be16(b, 2, bd_len);
    }

    #[test]
    fn unmap_fixture() {
        let p = UnmapParams {
            descriptors: vec![(0x10, 8)],
        };
        let b = p.build();
        assert_eq!(
            b,
            [
                0, 22, 0, 16, 0, 0, 0, 0, // header
                0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0,
            ]
        );
        assert_eq!(UnmapParams::parse(&b), Ok(p));
        assert_eq!(UnmapParams::parse(&b[..4]), Err(ParamError::LengthError));
        assert_eq!(UnmapParams::parse(&[]), Ok(UnmapParams::default()));
        // Incomplete last descriptor is ignored.
        let mut short = b.clone();
        short.truncate(20);
        set_unmap_lengths(&mut short, 18, 12);
        assert_eq!(UnmapParams::parse(&short).unwrap().descriptors.len(), 0);
    }

    #[test]
    fn lba_status_fixture() {
        let s = LbaStatus {
            descriptors: vec![LbaStatusDescriptor {
                lba: 5,
                blocks: 3,
                status: ProvisioningStatus::DEALLOCATED,
            }],
        };
        let b = s.build();
        assert_eq!(
            b,
            [0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 3, 1, 0, 0, 0]
        );
        assert_eq!(LbaStatus::parse(&b), Ok(s));
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = UnmapParams::parse(&b);
            let _ = LbaStatus::parse(&b);
        }

        #[test]
        fn unmap_round_trip(d in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..16)) {
            let p = UnmapParams { descriptors: d };
            prop_assert_eq!(UnmapParams::parse(&p.build()), Ok(p));
        }

        #[test]
        fn lba_status_round_trip(d in proptest::collection::vec((any::<u64>(), any::<u32>(), 0u8..3), 0..8)) {
            let s = LbaStatus { descriptors: d.into_iter().map(|(lba, blocks, st)| LbaStatusDescriptor {
                lba, blocks, status: ProvisioningStatus(st) }).collect() };
            prop_assert_eq!(LbaStatus::parse(&s.build()), Ok(s));
        }
    }
}
