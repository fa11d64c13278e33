//! Mode parameters (SPC-4 7.5): the MODE SENSE/SELECT (6) and (10)
//! headers, short and long block descriptors, and the pages a
//! direct-access LU offers — Caching (08h), Control (0Ah) and
//! Informational Exceptions Control (1Ch).

use crate::codec::{be16, be32, be64, set_be16, PutBe};
use crate::error::{need, DecodeError, ParamError};

// Page codes.
pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0a;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
/// Return all pages.
pub const PAGE_ALL: u8 = 0x3f;
/// Subpage code for "all subpages".
pub const SUBPAGE_ALL: u8 = 0xff;

/// Device-specific parameter bits of the mode parameter header (SBC-3).
pub const DSP_WRITE_PROTECT: u8 = 0x80;
pub const DSP_DPOFUA: u8 = 0x10;

const CACHING_LEN: usize = 0x14;
const CONTROL_LEN: usize = 0x0c;
const IEC_LEN: usize = 0x0c;

/// Caching mode page (SBC-3 6.4.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CachingPage {
    /// Write cache enabled: writes may sit in volatile cache until flushed.
    pub wce: bool,
    /// Read cache disabled.
    pub rcd: bool,
}

impl CachingPage {
    pub fn to_bytes(&self) -> [u8; CACHING_LEN] {
        let mut b = [0u8; CACHING_LEN];
        b[0] = PAGE_CACHING;
        b[1] = (CACHING_LEN - 2) as u8;
        b[2] = (u8::from(self.wce) << 2) | u8::from(self.rcd);
        b
    }

    pub fn from_bytes(b: &[u8]) -> CachingPage {
        let f = b.get(2).copied().unwrap_or(0);
        CachingPage {
            wce: f & 0x04 != 0,
            rcd: f & 0x01 != 0,
        }
    }
}

/// Control mode page (SPC-4 7.5.7).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ControlPage {
    /// Task set type: 000b one task set for all I_T nexuses.
    pub tst: u8,
    pub tmf_only: bool,
    /// Return descriptor-format sense data.
    pub d_sense: bool,
    /// Global logging target save disable.
    pub gltsd: bool,
    /// Queue algorithm modifier: 1 = unrestricted reordering.
    pub qam: u8,
    pub qerr: u8,
    pub ua_intlck_ctrl: u8,
    /// Software write protect.
    pub swp: bool,
    /// Task aborted status.
    pub tas: bool,
    pub busy_timeout_period: u16,
    pub extended_self_test_completion_time: u16,
}

impl ControlPage {
    pub fn to_bytes(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = PAGE_CONTROL;
        b[1] = (CONTROL_LEN - 2) as u8;
        b[2] = ((self.tst & 0x07) << 5)
            | (u8::from(self.tmf_only) << 4)
            | (u8::from(self.d_sense) << 2)
            | (u8::from(self.gltsd) << 1);
        b[3] = ((self.qam & 0x0f) << 4) | ((self.qerr & 0x03) << 1);
        b[4] = ((self.ua_intlck_ctrl & 0x03) << 4) | (u8::from(self.swp) << 3);
        b[5] = u8::from(self.tas) << 6;
        b[8..10].copy_from_slice(&self.busy_timeout_period.to_be_bytes());
        b[10..12].copy_from_slice(&self.extended_self_test_completion_time.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> ControlPage {
        let g = |i: usize| b.get(i).copied().unwrap_or(0);
        ControlPage {
            tst: g(2) >> 5,
            tmf_only: g(2) & 0x10 != 0,
            d_sense: g(2) & 0x04 != 0,
            gltsd: g(2) & 0x02 != 0,
            qam: g(3) >> 4,
            qerr: (g(3) >> 1) & 0x03,
            ua_intlck_ctrl: (g(4) >> 4) & 0x03,
            swp: g(4) & 0x08 != 0,
            tas: g(5) & 0x40 != 0,
            busy_timeout_period: be16(b, 8).unwrap_or(0),
            extended_self_test_completion_time: be16(b, 10).unwrap_or(0),
        }
    }
}

/// Informational Exceptions Control mode page (SPC-4 7.5.9).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct InformationalExceptionsPage {
    /// Informational exception operations disabled.
    pub dexcpt: bool,
    pub mrie: u8,
    pub interval_timer: u32,
    pub report_count: u32,
}

impl InformationalExceptionsPage {
    pub fn to_bytes(&self) -> [u8; IEC_LEN] {
        let mut b = [0u8; IEC_LEN];
        b[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
        b[1] = (IEC_LEN - 2) as u8;
        b[2] = u8::from(self.dexcpt) << 3;
        b[3] = self.mrie & 0x0f;
        b[4..8].copy_from_slice(&self.interval_timer.to_be_bytes());
        b[8..12].copy_from_slice(&self.report_count.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> InformationalExceptionsPage {
        InformationalExceptionsPage {
            dexcpt: b.get(2).copied().unwrap_or(0) & 0x08 != 0,
            mrie: b.get(3).copied().unwrap_or(0) & 0x0f,
            interval_timer: be32(b, 4).unwrap_or(0),
            report_count: be32(b, 8).unwrap_or(0),
        }
    }
}

/// A mode page as received or sent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ModePage {
    Caching(CachingPage),
    Control(ControlPage),
    InformationalExceptions(InformationalExceptionsPage),
    /// Any other page, kept as its raw bytes (header included).
    Other(Vec<u8>),
}

impl ModePage {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            ModePage::Caching(p) => p.to_bytes().to_vec(),
            ModePage::Control(p) => p.to_bytes().to_vec(),
            ModePage::InformationalExceptions(p) => p.to_bytes().to_vec(),
            ModePage::Other(b) => b.clone(),
        }
    }

    fn from_raw(raw: &[u8]) -> ModePage {
        let code = raw[0] & 0x3f;
        let spf = raw[0] & 0x40 != 0;
        match (code, spf, raw.len()) {
            (PAGE_CACHING, false, CACHING_LEN) => ModePage::Caching(CachingPage::from_bytes(raw)),
            (PAGE_CONTROL, false, CONTROL_LEN) => ModePage::Control(ControlPage::from_bytes(raw)),
            (PAGE_INFORMATIONAL_EXCEPTIONS, false, IEC_LEN) => {
                ModePage::InformationalExceptions(InformationalExceptionsPage::from_bytes(raw))
            }
            _ => ModePage::Other(raw.to_vec()),
        }
    }
}

/// A block descriptor: number of blocks and block length.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlockDescriptor {
    pub blocks: u64,
    pub block_len: u32,
}

/// Mode parameter data: header, block descriptors, pages.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ModeParameters {
    pub medium_type: u8,
    /// DEVICE-SPECIFIC PARAMETER (WP and DPOFUA bits for SBC).
    pub device_specific: u8,
    /// LONGLBA: 16-byte block descriptors (MODE SENSE(10) only).
    pub long_lba: bool,
    pub block_descriptors: Vec<BlockDescriptor>,
    pub pages: Vec<ModePage>,
}

/// A page found in a MODE SELECT parameter list, with its position for
/// field pointers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RawModePage<'a> {
    pub offset: usize,
    pub bytes: &'a [u8],
}

impl ModeParameters {
    /// Encode for MODE SENSE(6) (`ten` false) or (10).
    pub fn build(&self, ten: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        let long = ten && self.long_lba;
        let bd_len = self.block_descriptors.len() * if long { 16 } else { 8 };
        if ten {
            v.put_u16(0); // MODE DATA LENGTH, patched below
            v.push(self.medium_type);
            v.push(self.device_specific);
            v.push(u8::from(long));
            v.push(0);
            v.put_u16(bd_len as u16);
        } else {
            v.push(0);
            v.push(self.medium_type);
            v.push(self.device_specific);
            v.push(bd_len as u8);
        }
        for d in &self.block_descriptors {
            if long {
                v.put_u64(d.blocks);
                v.put_zeros(4);
                v.put_u32(d.block_len);
            } else {
                // SBC-3 6.4.2: more blocks than fit reads 0xffffffff.
                v.put_u32(u32::try_from(d.blocks).unwrap_or(u32::MAX));
                v.push(0);
                v.put_u24(d.block_len & 0x00ff_ffff);
            }
        }
        for p in &self.pages {
            v.extend_from_slice(&p.to_bytes());
        }
        // MODE DATA LENGTH excludes itself.
        if ten {
            let n = (v.len() - 2).min(usize::from(u16::MAX)) as u16;
            set_be16(&mut v, 0, n);
        } else {
            v[0] = (v.len() - 1).min(255) as u8;
        }
        v
    }

    /// Decode MODE SENSE data. Lenient: a list truncated by the allocation
    /// length yields the complete pages.
    pub fn parse(b: &[u8], ten: bool) -> Result<ModeParameters, DecodeError> {
        let hdr = if ten { 8 } else { 4 };
        need(b, hdr)?;
        let (data_len, medium_type, device_specific, long_lba, bd_len) = if ten {
            (
                usize::from(be16(b, 0).unwrap_or(0)) + 2,
                b[2],
                b[3],
                b[4] & 0x01 != 0,
                usize::from(be16(b, 6).unwrap_or(0)),
            )
        } else {
            (usize::from(b[0]) + 1, b[1], b[2], false, usize::from(b[3]))
        };
        let end = b.len().min(data_len);
        let dlen = if long_lba { 16 } else { 8 };
        let mut block_descriptors = Vec::new();
        let bd_end = hdr.saturating_add(bd_len);
        let mut at = hdr;
        while at + dlen <= bd_end.min(end) {
            block_descriptors.push(if long_lba {
                BlockDescriptor {
                    blocks: be64(b, at).unwrap_or(0),
                    block_len: be32(b, at + 12).unwrap_or(0),
                }
            } else {
                BlockDescriptor {
                    blocks: u64::from(be32(b, at).unwrap_or(0)),
                    block_len: be32(b, at + 4).unwrap_or(0) & 0x00ff_ffff,
                }
            });
            at += dlen;
        }
        let mut pages = Vec::new();
        let mut at = bd_end;
        while at + 2 <= end {
            let spf = b[at] & 0x40 != 0;
            let (plen, phdr) = if spf {
                match be16(b, at + 2) {
                    Some(l) => (usize::from(l), 4),
                    None => break,
                }
            } else {
                (usize::from(b[at + 1]), 2)
            };
            let pend = at + phdr + plen;
            if pend > end {
                break;
            }
            pages.push(ModePage::from_raw(&b[at..pend]));
            at = pend;
        }
        Ok(ModeParameters {
            medium_type,
            device_specific,
            long_lba,
            block_descriptors,
            pages,
        })
    }

    pub fn caching(&self) -> Option<CachingPage> {
        self.pages.iter().find_map(|p| match p {
            ModePage::Caching(c) => Some(*c),
            _ => None,
        })
    }

    pub fn control(&self) -> Option<ControlPage> {
        self.pages.iter().find_map(|p| match p {
            ModePage::Control(c) => Some(*c),
            _ => None,
        })
    }
}

/// A MODE SELECT parameter list split into its parts, with offsets kept
/// for field pointers (SPC-4 6.11, 6.12).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModeSelectList<'a> {
    pub device_specific: u8,
    pub long_lba: bool,
    /// Block descriptors with the offset of each.
    pub block_descriptors: Vec<(usize, BlockDescriptor)>,
    pub pages: Vec<RawModePage<'a>>,
}

impl<'a> ModeSelectList<'a> {
    /// Split a MODE SELECT parameter list. Anything that does not add up —
    /// a header longer than the list, a page running past the end — is a
    /// PARAMETER LIST LENGTH ERROR; a non-zero MODE DATA LENGTH (reserved
    /// for MODE SELECT) is an invalid field.
    pub fn parse(b: &'a [u8], ten: bool) -> Result<ModeSelectList<'a>, ParamError> {
        let hdr = if ten { 8 } else { 4 };
        if b.len() < hdr {
            return Err(ParamError::LengthError);
        }
        let (data_len, device_specific, long_lba, bd_len) = if ten {
            (
                usize::from(be16(b, 0).unwrap_or(0)),
                b[3],
                b[4] & 0x01 != 0,
                usize::from(be16(b, 6).unwrap_or(0)),
            )
        } else {
            (usize::from(b[0]), b[2], false, usize::from(b[3]))
        };
        if data_len != 0 {
            return Err(ParamError::at(0));
        }
        let dlen = if long_lba { 16 } else { 8 };
        if bd_len % dlen != 0 {
            return Err(ParamError::at(if ten { 6 } else { 3 }));
        }
        let bd_end = hdr + bd_len;
        if bd_end > b.len() {
            return Err(ParamError::LengthError);
        }
        let mut block_descriptors = Vec::new();
        for at in (hdr..bd_end).step_by(dlen) {
            let d = if long_lba {
                BlockDescriptor {
                    blocks: be64(b, at).unwrap_or(0),
                    block_len: be32(b, at + 12).unwrap_or(0),
                }
            } else {
                BlockDescriptor {
                    blocks: u64::from(be32(b, at).unwrap_or(0)),
                    block_len: be32(b, at + 4).unwrap_or(0) & 0x00ff_ffff,
                }
            };
            block_descriptors.push((at, d));
        }
        let mut pages = Vec::new();
        let mut at = bd_end;
        while at < b.len() {
            if at + 2 > b.len() {
                return Err(ParamError::LengthError);
            }
            let spf = b[at] & 0x40 != 0;
            let (plen, phdr) = if spf {
                (
                    usize::from(be16(b, at + 2).ok_or(ParamError::LengthError)?),
                    4,
                )
            } else {
                (usize::from(b[at + 1]), 2)
            };
            let pend = at + phdr + plen;
            if pend > b.len() {
                return Err(ParamError::LengthError);
            }
            pages.push(RawModePage {
                offset: at,
                bytes: &b[at..pend],
            });
            at = pend;
        }
        Ok(ModeSelectList {
            device_specific,
            long_lba,
            block_descriptors,
            pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ModeParameters {
        ModeParameters {
            medium_type: 0,
            device_specific: DSP_DPOFUA,
            long_lba: false,
            block_descriptors: vec![BlockDescriptor {
                blocks: 2048,
                block_len: 512,
            }],
            pages: vec![
                ModePage::Caching(CachingPage {
                    wce: true,
                    rcd: false,
                }),
                ModePage::Control(ControlPage {
                    qam: 1,
                    gltsd: true,
                    busy_timeout_period: 0xffff,
                    ..Default::default()
                }),
            ],
        }
    }

    #[test]
    fn mode_sense6_fixture() {
        let b = sample().build(false);
        #[rustfmt::skip]
        let expect: Vec<u8> = [
            &[43u8, 0, 0x10, 8][..],
            &[0, 0, 0x08, 0, 0, 0, 0x02, 0],
            &[0x08, 0x12, 0x04], &[0; 17],
            &[0x0a, 0x0a, 0x02, 0x10, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        ]
        .concat();
        assert_eq!(b, expect);
        assert_eq!(ModeParameters::parse(&b, false), Ok(sample()));
        // Allocation length 4: header only, no pages.
        let t = ModeParameters::parse(&b[..4], false).unwrap();
        assert!(t.pages.is_empty());
    }

    #[test]
    fn mode_sense10_long_lba() {
        let mut m = sample();
        m.long_lba = true;
        m.block_descriptors[0].blocks = 0x1_0000_0000;
        let b = m.build(true);
        assert_eq!(&b[..8], &[0, 54, 0, 0x10, 1, 0, 0, 16]);
        assert_eq!(ModeParameters::parse(&b, true), Ok(m));
        // Short descriptors saturate.
        let mut s = sample();
        s.block_descriptors[0].blocks = 0x1_0000_0000;
        let b = s.build(false);
        assert_eq!(&b[4..8], &[0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn mode_select_split() {
        let mut list = vec![0u8, 0, 0, 0];
        list.extend_from_slice(&ControlPage::default().to_bytes());
        let s = ModeSelectList::parse(&list, false).unwrap();
        assert_eq!(s.pages.len(), 1);
        assert_eq!(s.pages[0].offset, 4);
        assert_eq!(
            ModeSelectList::parse(&list[..10], false),
            Err(ParamError::LengthError)
        );
        list[0] = 5;
        assert_eq!(ModeSelectList::parse(&list, false), Err(ParamError::at(0)));
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..96), ten in any::<bool>()) {
            let _ = ModeParameters::parse(&b, ten);
            let _ = ModeSelectList::parse(&b, ten);
        }

        #[test]
        fn control_round_trip(tst in 0u8..8, tmf in any::<bool>(), ds in any::<bool>(), g in any::<bool>(),
                              qam in 0u8..16, qerr in 0u8..4, ua in 0u8..4, swp in any::<bool>(), tas in any::<bool>(),
                              bt in any::<u16>(), st in any::<u16>()) {
            let c = ControlPage { tst, tmf_only: tmf, d_sense: ds, gltsd: g, qam, qerr, ua_intlck_ctrl: ua,
                swp, tas, busy_timeout_period: bt, extended_self_test_completion_time: st };
            prop_assert_eq!(ControlPage::from_bytes(&c.to_bytes()), c);
        }

        #[test]
        fn mode_round_trip(ten in any::<bool>(), wce in any::<bool>(), ds in any::<bool>(), blocks in 0u64..0x1_0000_0000, dbd in any::<bool>()) {
            let m = ModeParameters {
                medium_type: 0,
                device_specific: DSP_DPOFUA,
                long_lba: false,
                block_descriptors: if dbd { vec![] } else { vec![BlockDescriptor { blocks, block_len: 4096 }] },
                pages: vec![
                    ModePage::Caching(CachingPage { wce, rcd: false }),
                    ModePage::Control(ControlPage { d_sense: ds, ..Default::default() }),
                    ModePage::InformationalExceptions(InformationalExceptionsPage { dexcpt: true, ..Default::default() }),
                ],
            };
            prop_assert_eq!(ModeParameters::parse(&m.build(ten), ten), Ok(m));
        }
    }
}
