//! Logical unit numbers (SAM-5 4.6, single level) and REPORT LUNS
//! parameter data (SPC-4 6.33).

use std::fmt;

use crate::codec::{be32, PutBe};
use crate::error::{need, DecodeError};

/// Largest LUN expressible with single-level flat space addressing.
pub const MAX_LUN: u16 = 0x3fff;

/// A single-level logical unit number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lun(pub u16);

impl Lun {
    /// The 8-byte LUN structure: peripheral device addressing (00b) below
    /// 256, flat space addressing (01b) up to 16383.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        if self.0 < 256 {
            b[1] = self.0 as u8;
        } else {
            let v = self.0 & MAX_LUN;
            b[0] = 0x40 | (v >> 8) as u8;
            b[1] = v as u8;
        }
        b
    }

    /// Decode a single-level LUN structure; `None` for other addressing
    /// methods or multi-level LUNs.
    pub fn from_bytes(b: [u8; 8]) -> Option<Lun> {
        if b[2..].iter().any(|&x| x != 0) {
            return None;
        }
        match b[0] >> 6 {
            0b00 if b[0] == 0 => Some(Lun(u16::from(b[1]))),
            0b01 => Some(Lun((u16::from(b[0] & 0x3f) << 8) | u16::from(b[1]))),
            _ => None,
        }
    }
}

impl fmt::Debug for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lun({})", self.0)
    }
}

impl fmt::Display for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// SELECT REPORT values we serve (SPC-4 table 197).
pub const SELECT_REPORT_ALL_EXCEPT_WELL_KNOWN: u8 = 0x00;
pub const SELECT_REPORT_WELL_KNOWN_ONLY: u8 = 0x01;
pub const SELECT_REPORT_ALL: u8 = 0x02;

/// REPORT LUNS parameter data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ReportLunsData {
    pub luns: Vec<Lun>,
}

impl ReportLunsData {
    /// The data for SELECT REPORT `select`; `None` for a SELECT REPORT
    /// value we do not support (the caller answers INVALID FIELD IN CDB).
    /// We have no well-known LUs, so 01h reports an empty list.
    pub fn for_select(luns: &[Lun], select: u8) -> Option<ReportLunsData> {
        match select {
            SELECT_REPORT_ALL_EXCEPT_WELL_KNOWN | SELECT_REPORT_ALL => {
                let mut luns = luns.to_vec();
                luns.sort_unstable();
                luns.dedup();
                Some(ReportLunsData { luns })
            }
            SELECT_REPORT_WELL_KNOWN_ONLY => Some(ReportLunsData::default()),
            _ => None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 8 * self.luns.len());
        v.put_u32((8 * self.luns.len()) as u32);
        v.put_zeros(4);
        for l in &self.luns {
            v.extend_from_slice(&l.to_bytes());
        }
        v
    }

    /// Lenient: a list truncated by the allocation length yields the
    /// complete entries; entries with other addressing methods are skipped.
    pub fn parse(b: &[u8]) -> Result<ReportLunsData, DecodeError> {
        need(b, 8)?;
        let declared = be32(b, 0).unwrap_or(0) as usize;
        let n = declared.min(b.len() - 8) / 8;
        let luns = (0..n)
            .filter_map(|i| {
                let mut e = [0u8; 8];
                e.copy_from_slice(&b[8 + 8 * i..16 + 8 * i]);
                Lun::from_bytes(e)
            })
            .collect();
        Ok(ReportLunsData { luns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lun_addressing() {
        assert_eq!(Lun(1).to_bytes(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun(256).to_bytes(), [0x41, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun(0x3fff).to_bytes(), [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::from_bytes([0x41, 0, 0, 0, 0, 0, 0, 0]), Some(Lun(256)));
        assert_eq!(Lun::from_bytes([0xc1, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Lun::from_bytes([0, 1, 0, 1, 0, 0, 0, 0]), None);
    }

    #[test]
    fn report_luns_fixture() {
        let d = ReportLunsData::for_select(&[Lun(300), Lun(0)], SELECT_REPORT_ALL).unwrap();
        assert_eq!(
            d.build(),
            [0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0]
        );
        assert!(ReportLunsData::for_select(&[Lun(0)], 0x10).is_none());
        assert!(ReportLunsData::for_select(&[Lun(0)], 1)
            .unwrap()
            .luns
            .is_empty());
    }

    proptest! {
        #[test]
        fn parse_is_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ReportLunsData::parse(&b);
        }

        #[test]
        fn round_trip(luns in proptest::collection::vec(0u16..=MAX_LUN, 0..16)) {
            let d = ReportLunsData { luns: luns.into_iter().map(Lun).collect() };
            prop_assert_eq!(ReportLunsData::parse(&d.build()), Ok(d.clone()));
            for l in d.luns {
                prop_assert_eq!(Lun::from_bytes(l.to_bytes()), Some(l));
            }
        }
    }
}
