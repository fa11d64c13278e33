//! PERSISTENT RESERVE IN / OUT data formats (SPC-4 6.16, 6.17) and iSCSI
//! TransportIDs (SPC-4 7.6.4.6).

use std::fmt;

use crate::codec::{be16, be32, be64, pad4, set_be32, u8_at, PutBe};
use crate::error::{need, DecodeError, ParamError};

/// Persistent reservation TYPE. A newtype so reserved values survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PrType(pub u8);

impl PrType {
    pub const WRITE_EXCLUSIVE: PrType = PrType(0x1);
    pub const EXCLUSIVE_ACCESS: PrType = PrType(0x3);
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: PrType = PrType(0x5);
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: PrType = PrType(0x6);
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: PrType = PrType(0x7);
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: PrType = PrType(0x8);

    pub fn is_valid(self) -> bool {
        matches!(self.0, 1 | 3 | 5 | 6 | 7 | 8)
    }

    /// Every registrant is a reservation holder (types 7 and 8).
    pub fn is_all_registrants(self) -> bool {
        matches!(self.0, 7 | 8)
    }

    /// Registrants are granted access (types 5 to 8).
    pub fn admits_registrants(self) -> bool {
        matches!(self.0, 5..=8)
    }

    /// Exclusive Access types also block reads from non-holders.
    pub fn is_exclusive_access(self) -> bool {
        matches!(self.0, 3 | 6 | 8)
    }

    /// Bit in the REPORT CAPABILITIES PERSISTENT RESERVATION TYPE MASK.
    pub fn type_mask_bit(self) -> u16 {
        match self.0 {
            7 => 0x8000,
            6 => 0x4000,
            5 => 0x2000,
            3 => 0x0800,
            1 => 0x0200,
            8 => 0x0001,
            _ => 0,
        }
    }
}

impl fmt::Debug for PrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = match self.0 {
            1 => "WE",
            3 => "EA",
            5 => "WERO",
            6 => "EARO",
            7 => "WEAR",
            8 => "EAAR",
            _ => return write!(f, "PrType({:#x})", self.0),
        };
        f.write_str(n)
    }
}

/// PERSISTENT RESERVE IN service action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PrInAction(pub u8);

impl PrInAction {
    pub const READ_KEYS: PrInAction = PrInAction(0x00);
    pub const READ_RESERVATION: PrInAction = PrInAction(0x01);
    pub const REPORT_CAPABILITIES: PrInAction = PrInAction(0x02);
    pub const READ_FULL_STATUS: PrInAction = PrInAction(0x03);

    pub fn is_known(self) -> bool {
        self.0 <= 0x03
    }
}

/// PERSISTENT RESERVE OUT service action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PrOutAction(pub u8);

impl PrOutAction {
    pub const REGISTER: PrOutAction = PrOutAction(0x00);
    pub const RESERVE: PrOutAction = PrOutAction(0x01);
    pub const RELEASE: PrOutAction = PrOutAction(0x02);
    pub const CLEAR: PrOutAction = PrOutAction(0x03);
    pub const PREEMPT: PrOutAction = PrOutAction(0x04);
    pub const PREEMPT_AND_ABORT: PrOutAction = PrOutAction(0x05);
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: PrOutAction = PrOutAction(0x06);
    pub const REGISTER_AND_MOVE: PrOutAction = PrOutAction(0x07);

    pub fn is_known(self) -> bool {
        self.0 <= 0x07
    }
}

/// SCSI transport protocol identifier of iSCSI (SPC-4 table 426).
pub const PROTOCOL_ID_ISCSI: u8 = 0x5;

/// Length of TransportIDs of protocols other than iSCSI (they are fixed
/// 24-byte structures in SPC-4 7.6.4).
const FIXED_TRANSPORT_ID_LEN: usize = 24;

/// Smallest iSCSI TransportID ADDITIONAL LENGTH SPC-4 allows.
const MIN_ISCSI_TRANSPORT_ID_ADDITIONAL: usize = 20;

/// A TransportID: who an initiator port is, as PR parameter lists and READ
/// FULL STATUS carry it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum TransportId {
    /// iSCSI: format 00b names the initiator device only; format 01b names
    /// an initiator port, `name,i,0x<ISID in hex>`.
    Iscsi { name: String, isid: Option<String> },
    /// Another protocol, kept opaque.
    Other { protocol: u8, bytes: Vec<u8> },
}

impl TransportId {
    /// The TransportID of an initiator port string `iqn...,i,0x<isid>`
    /// (format 01b), or of a bare name (format 00b).
    pub fn from_initiator_port(port: &str) -> TransportId {
        match split_initiator_port(port) {
            Some((name, isid)) => TransportId::Iscsi {
                name: name.to_string(),
                isid: Some(isid.to_ascii_lowercase()),
            },
            None => TransportId::Iscsi {
                name: port.to_string(),
                isid: None,
            },
        }
    }

    /// Does this TransportID designate the initiator port `port` (an
    /// `iqn...,i,0x<isid>` string)? Name-only TransportIDs match every port
    /// of that initiator.
    pub fn matches_port(&self, port: &str) -> bool {
        match self {
            TransportId::Iscsi { name, isid } => match split_initiator_port(port) {
                Some((pname, pisid)) => {
                    pname == name
                        && isid
                            .as_deref()
                            .is_none_or(|i| i.eq_ignore_ascii_case(pisid))
                }
                None => isid.is_none() && port == name,
            },
            TransportId::Other { .. } => false,
        }
    }

    /// The initiator port string this TransportID names, if it is an iSCSI
    /// format 01b TransportID.
    pub fn initiator_port(&self) -> Option<String> {
        match self {
            TransportId::Iscsi {
                name,
                isid: Some(isid),
            } => Some(format!("{name},i,0x{isid}")),
            _ => None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        match self {
            TransportId::Iscsi { name, isid } => {
                let (fmt, text) = match isid {
                    Some(i) => (0x40, format!("{name},i,0x{i}")),
                    None => (0x00, name.clone()),
                };
                // NUL-terminated, padded to a multiple of four, at least 20.
                let add = pad4(text.len() + 1).max(MIN_ISCSI_TRANSPORT_ID_ADDITIONAL);
                let mut v = Vec::with_capacity(4 + add);
                v.push(fmt | PROTOCOL_ID_ISCSI);
                v.push(0);
                v.put_u16(add as u16);
                v.extend_from_slice(text.as_bytes());
                v.resize(4 + add, 0);
                v
            }
            TransportId::Other { bytes, .. } => bytes.clone(),
        }
    }

    /// Parse one TransportID at the start of `b`; returns it and its length.
    /// `base` is `b`'s offset in the parameter list, for field pointers.
    pub fn parse(b: &[u8], base: usize) -> Result<(TransportId, usize), ParamError> {
        let b0 = *b.first().ok_or(ParamError::LengthError)?;
        let protocol = b0 & 0x0f;
        let format = b0 >> 6;
        if protocol != PROTOCOL_ID_ISCSI {
            let bytes = b
                .get(..FIXED_TRANSPORT_ID_LEN)
                .ok_or(ParamError::LengthError)?;
            return Ok((
                TransportId::Other {
                    protocol,
                    bytes: bytes.to_vec(),
                },
                FIXED_TRANSPORT_ID_LEN,
            ));
        }
        if format > 1 {
            return Err(ParamError::at_bit(base, 7));
        }
        let add = usize::from(be16(b, 2).ok_or(ParamError::LengthError)?);
        if add < MIN_ISCSI_TRANSPORT_ID_ADDITIONAL || add % 4 != 0 {
            return Err(ParamError::at(base + 2));
        }
        let body = b.get(4..4 + add).ok_or(ParamError::LengthError)?;
        let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
        let text = std::str::from_utf8(&body[..end]).map_err(|_| ParamError::at(base + 4))?;
        let tid = if format == 1 {
            let (name, isid) = split_initiator_port(text).ok_or(ParamError::at(base + 4))?;
            TransportId::Iscsi {
                name: name.to_string(),
                isid: Some(isid.to_ascii_lowercase()),
            }
        } else {
            if text.is_empty() {
                return Err(ParamError::at(base + 4));
            }
            TransportId::Iscsi {
                name: text.to_string(),
                isid: None,
            }
        };
        Ok((tid, 4 + add))
    }
}

/// Split `name,i,0x<isid>` into the initiator name and the ISID digits.
pub fn split_initiator_port(port: &str) -> Option<(&str, &str)> {
    let at = port.find(",i,0x").or_else(|| port.find(",I,0X"))?;
    let isid = &port[at + 5..];
    if isid.is_empty() || !isid.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((&port[..at], isid))
}

/// The basic PERSISTENT RESERVE OUT parameter list (every service action
/// but REGISTER AND MOVE).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PrOutParams {
    pub reservation_key: u64,
    pub service_action_key: u64,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// With SPEC_I_PT: the additional initiator ports to register.
    pub transport_ids: Vec<TransportId>,
}

/// Length of the basic PR OUT parameter list without TransportIDs.
pub const PR_OUT_BASIC_LEN: usize = 24;

impl PrOutParams {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(PR_OUT_BASIC_LEN);
        v.put_u64(self.reservation_key);
        v.put_u64(self.service_action_key);
        v.put_zeros(4);
        v.push(
            (u8::from(self.spec_i_pt) << 3)
                | (u8::from(self.all_tg_pt) << 2)
                | u8::from(self.aptpl),
        );
        v.put_zeros(3);
        if self.spec_i_pt {
            let tids: Vec<u8> = self.transport_ids.iter().flat_map(|t| t.build()).collect();
            v.put_u32(tids.len() as u32);
            v.extend_from_slice(&tids);
        }
        v
    }

    /// Parse the parameter list of service action `action` (SPC-4 6.17.3).
    pub fn parse(b: &[u8], action: PrOutAction) -> Result<PrOutParams, ParamError> {
        if b.len() < PR_OUT_BASIC_LEN {
            return Err(ParamError::LengthError);
        }
        let flags = b[20];
        let spec_i_pt = flags & 0x08 != 0;
        let mut p = PrOutParams {
            reservation_key: be64(b, 0).unwrap_or(0),
            service_action_key: be64(b, 8).unwrap_or(0),
            spec_i_pt,
            all_tg_pt: flags & 0x04 != 0,
            aptpl: flags & 0x01 != 0,
            transport_ids: Vec::new(),
        };
        if !spec_i_pt {
            if b.len() != PR_OUT_BASIC_LEN {
                return Err(ParamError::LengthError);
            }
            return Ok(p);
        }
        // SPEC_I_PT only means something for REGISTER.
        if action != PrOutAction::REGISTER {
            return Err(ParamError::at_bit(20, 3));
        }
        let tpdl = be32(b, 24).ok_or(ParamError::LengthError)? as usize;
        if b.len() != 28 + tpdl {
            return Err(ParamError::LengthError);
        }
        let mut at = 28;
        while at < b.len() {
            let (tid, n) = TransportId::parse(&b[at..], at)?;
            p.transport_ids.push(tid);
            at += n;
        }
        if at != b.len() {
            return Err(ParamError::LengthError);
        }
        Ok(p)
    }
}

/// The REGISTER AND MOVE parameter list (SPC-4 6.17.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegisterAndMoveParams {
    pub reservation_key: u64,
    pub service_action_key: u64,
    pub unreg: bool,
    pub aptpl: bool,
    pub relative_target_port: u16,
    pub transport_id: TransportId,
}

impl RegisterAndMoveParams {
    pub fn build(&self) -> Vec<u8> {
        let tid = self.transport_id.build();
        let mut v = Vec::with_capacity(24 + tid.len());
        v.put_u64(self.reservation_key);
        v.put_u64(self.service_action_key);
        v.push(0);
        v.push((u8::from(self.unreg) << 1) | u8::from(self.aptpl));
        v.put_u16(self.relative_target_port);
        v.put_u32(tid.len() as u32);
        v.extend_from_slice(&tid);
        v
    }

    pub fn parse(b: &[u8]) -> Result<RegisterAndMoveParams, ParamError> {
        if b.len() < 24 {
            return Err(ParamError::LengthError);
        }
        let tpdl = be32(b, 20).unwrap_or(0) as usize;
        if tpdl == 0 || b.len() != 24 + tpdl {
            return Err(ParamError::LengthError);
        }
        let (transport_id, n) = TransportId::parse(&b[24..], 24)?;
        if n != tpdl {
            return Err(ParamError::at(20));
        }
        Ok(RegisterAndMoveParams {
            reservation_key: be64(b, 0).unwrap_or(0),
            service_action_key: be64(b, 8).unwrap_or(0),
            unreg: b[17] & 0x02 != 0,
            aptpl: b[17] & 0x01 != 0,
            relative_target_port: be16(b, 18).unwrap_or(0),
            transport_id,
        })
    }
}

/// READ KEYS data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ReadKeys {
    pub generation: u32,
    pub keys: Vec<u64>,
}

impl ReadKeys {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 8 * self.keys.len());
        v.put_u32(self.generation);
        v.put_u32((8 * self.keys.len()) as u32);
        for &k in &self.keys {
            v.put_u64(k);
        }
        v
    }

    /// Lenient: a list truncated by the allocation length yields the keys
    /// that are complete.
    pub fn parse(b: &[u8]) -> Result<ReadKeys, DecodeError> {
        need(b, 8)?;
        let declared = be32(b, 4).unwrap_or(0) as usize;
        let avail = declared.min(b.len() - 8) / 8;
        let keys = (0..avail).filter_map(|i| be64(b, 8 + 8 * i)).collect();
        Ok(ReadKeys {
            generation: be32(b, 0).unwrap_or(0),
            keys,
        })
    }
}

/// The reservation as READ RESERVATION reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReservationInfo {
    /// Holder's key; zero for all-registrants types.
    pub key: u64,
    pub scope: u8,
    pub pr_type: PrType,
}

/// READ RESERVATION data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadReservation {
    pub generation: u32,
    pub reservation: Option<ReservationInfo>,
}

impl ReadReservation {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.put_u32(self.generation);
        match self.reservation {
            None => v.put_u32(0),
            Some(r) => {
                v.put_u32(0x10);
                v.put_u64(r.key);
                v.put_zeros(4); // obsolete
                v.push(0);
                v.push((r.scope << 4) | (r.pr_type.0 & 0x0f));
                v.put_zeros(2);
            }
        }
        v
    }

    pub fn parse(b: &[u8]) -> Result<ReadReservation, DecodeError> {
        need(b, 8)?;
        let generation = be32(b, 0).unwrap_or(0);
        let len = be32(b, 4).unwrap_or(0);
        if len == 0 {
            return Ok(ReadReservation {
                generation,
                reservation: None,
            });
        }
        need(b, 22)?;
        Ok(ReadReservation {
            generation,
            reservation: Some(ReservationInfo {
                key: be64(b, 8).unwrap_or(0),
                scope: b[21] >> 4,
                pr_type: PrType(b[21] & 0x0f),
            }),
        })
    }
}

/// REPORT CAPABILITIES data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Capabilities {
    /// Compatible Reservation Handling: RESERVE/RELEASE coexist with PR as
    /// SPC-3 5.6.3 describes.
    pub crh: bool,
    pub sip_c: bool,
    pub atp_c: bool,
    pub ptpl_c: bool,
    pub tmv: bool,
    pub allow_commands: u8,
    pub ptpl_a: bool,
    pub type_mask: u16,
}

impl Capabilities {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8);
        v.put_u16(8);
        v.push(
            (u8::from(self.crh) << 4)
                | (u8::from(self.sip_c) << 3)
                | (u8::from(self.atp_c) << 2)
                | u8::from(self.ptpl_c),
        );
        v.push(
            (u8::from(self.tmv) << 7) | ((self.allow_commands & 0x07) << 4) | u8::from(self.ptpl_a),
        );
        v.put_u16(self.type_mask);
        v.put_zeros(2);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Capabilities, DecodeError> {
        need(b, 6)?;
        Ok(Capabilities {
            crh: b[2] & 0x10 != 0,
            sip_c: b[2] & 0x08 != 0,
            atp_c: b[2] & 0x04 != 0,
            ptpl_c: b[2] & 0x01 != 0,
            tmv: b[3] & 0x80 != 0,
            allow_commands: (b[3] >> 4) & 0x07,
            ptpl_a: b[3] & 0x01 != 0,
            type_mask: be16(b, 4).unwrap_or(0),
        })
    }
}

/// One registration as READ FULL STATUS reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FullStatusDescriptor {
    pub key: u64,
    pub all_tg_pt: bool,
    pub holder: bool,
    pub scope: u8,
    pub pr_type: PrType,
    pub relative_target_port: u16,
    pub transport_id: TransportId,
}

/// READ FULL STATUS data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FullStatus {
    pub generation: u32,
    pub descriptors: Vec<FullStatusDescriptor>,
}

impl FullStatus {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.put_u32(self.generation);
        v.put_u32(0); // patched below
        for d in &self.descriptors {
            let tid = d.transport_id.build();
            v.put_u64(d.key);
            v.put_zeros(4);
            v.push((u8::from(d.all_tg_pt) << 1) | u8::from(d.holder));
            v.push(if d.holder {
                (d.scope << 4) | (d.pr_type.0 & 0x0f)
            } else {
                0
            });
            v.put_zeros(4);
            v.put_u16(d.relative_target_port);
            v.put_u32(tid.len() as u32);
            v.extend_from_slice(&tid);
        }
        let len = (v.len() - 8) as u32;
        set_be32(&mut v, 4, len);
        v
    }

    /// Lenient: descriptors cut by the allocation length are dropped.
    pub fn parse(b: &[u8]) -> Result<FullStatus, DecodeError> {
        need(b, 8)?;
        let end = b.len().min(8 + be32(b, 4).unwrap_or(0) as usize);
        let mut descriptors = Vec::new();
        let mut at = 8;
        while at + 24 <= end {
            let add = be32(b, at + 20).unwrap_or(0) as usize;
            let Some(tid_end) = (at + 24).checked_add(add) else {
                break;
            };
            if tid_end > end {
                break;
            }
            let transport_id = match TransportId::parse(&b[at + 24..tid_end], 0) {
                Ok((t, _)) => t,
                Err(_) => TransportId::Other {
                    protocol: u8_at(b, at + 24).unwrap_or(0) & 0x0f,
                    bytes: b[at + 24..tid_end].to_vec(),
                },
            };
            descriptors.push(FullStatusDescriptor {
                key: be64(b, at).unwrap_or(0),
                all_tg_pt: b[at + 12] & 0x02 != 0,
                holder: b[at + 12] & 0x01 != 0,
                scope: b[at + 13] >> 4,
                pr_type: PrType(b[at + 13] & 0x0f),
                relative_target_port: be16(b, at + 18).unwrap_or(0),
                transport_id,
            });
            at = tid_end;
        }
        Ok(FullStatus {
            generation: be32(b, 0).unwrap_or(0),
            descriptors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iscsi_transport_id_fixture() {
        let t = TransportId::from_initiator_port("iqn.a,i,0x23D000000001");
        let b = t.build();
        // format 01b, protocol 5; "iqn.a,i,0x23d000000001" + NUL = 23 → 24.
        assert_eq!(&b[..4], &[0x45, 0x00, 0x00, 24]);
        assert_eq!(&b[4..26], b"iqn.a,i,0x23d000000001");
        assert_eq!(b.len(), 28);
        assert_eq!(TransportId::parse(&b, 0).unwrap(), (t.clone(), 28));
        assert!(t.matches_port("iqn.a,i,0x23d000000001"));
        assert!(!t.matches_port("iqn.a,i,0x23d000000002"));
        let name_only = TransportId::Iscsi {
            name: "iqn.a".into(),
            isid: None,
        };
        assert_eq!(name_only.build()[..4], [0x05, 0, 0, 20]);
        assert!(name_only.matches_port("iqn.a,i,0x1"));
        assert_eq!(
            t.initiator_port().as_deref(),
            Some("iqn.a,i,0x23d000000001")
        );
    }

    #[test]
    fn pr_out_params_rules() {
        let p = PrOutParams {
            reservation_key: 1,
            service_action_key: 2,
            ..Default::default()
        };
        let b = p.build();
        assert_eq!(b.len(), 24);
        assert_eq!(PrOutParams::parse(&b, PrOutAction::REGISTER), Ok(p));
        assert_eq!(
            PrOutParams::parse(&b[..20], PrOutAction::REGISTER),
            Err(ParamError::LengthError)
        );
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            PrOutParams::parse(&long, PrOutAction::REGISTER),
            Err(ParamError::LengthError)
        );
        let spec = PrOutParams {
            spec_i_pt: true,
            transport_ids: vec![TransportId::from_initiator_port("iqn.x,i,0x1")],
            ..Default::default()
        };
        let sb = spec.build();
        assert_eq!(PrOutParams::parse(&sb, PrOutAction::REGISTER), Ok(spec));
        assert_eq!(
            PrOutParams::parse(&sb, PrOutAction::RESERVE),
            Err(ParamError::at_bit(20, 3))
        );
    }

    #[test]
    fn pr_in_fixtures() {
        let rk = ReadKeys {
            generation: 3,
            keys: vec![0x1122334455667788],
        };
        let b = rk.build();
        assert_eq!(
            b,
            [0, 0, 0, 3, 0, 0, 0, 8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        // Truncated to 8 bytes: ADDITIONAL LENGTH stays, no keys.
        let t = ReadKeys::parse(&b[..8]).unwrap();
        assert_eq!(t.keys.len(), 0);
        let rr = ReadReservation {
            generation: 9,
            reservation: Some(ReservationInfo {
                key: 5,
                scope: 0,
                pr_type: PrType::EXCLUSIVE_ACCESS,
            }),
        };
        let b = rr.build();
        assert_eq!(b.len(), 24);
        assert_eq!(b[21], 0x03);
        assert_eq!(ReadReservation::parse(&b), Ok(rr));
        let caps = Capabilities {
            crh: true,
            sip_c: true,
            atp_c: true,
            tmv: true,
            type_mask: 0xea01,
            ..Default::default()
        };
        assert_eq!(caps.build(), [0, 8, 0x1c, 0x80, 0xea, 0x01, 0, 0]);
        assert_eq!(Capabilities::parse(&caps.build()), Ok(caps));
    }

    fn arb_tid() -> impl Strategy<Value = TransportId> {
        ("[a-z0-9.:-]{1,40}", proptest::option::of("[0-9a-f]{12}"))
            .prop_map(|(name, isid)| TransportId::Iscsi { name, isid })
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..96), a in 0u8..8) {
            let _ = PrOutParams::parse(&b, PrOutAction(a));
            let _ = RegisterAndMoveParams::parse(&b);
            let _ = TransportId::parse(&b, 0);
            let _ = ReadKeys::parse(&b);
            let _ = ReadReservation::parse(&b);
            let _ = Capabilities::parse(&b);
            let _ = FullStatus::parse(&b);
        }

        #[test]
        fn full_status_round_trip(
            gen in any::<u32>(),
            descs in proptest::collection::vec((any::<u64>(), any::<bool>(), any::<bool>(), any::<u16>(), arb_tid()), 0..4),
        ) {
            let fs = FullStatus {
                generation: gen,
                descriptors: descs.into_iter().map(|(key, all, holder, rtp, tid)| FullStatusDescriptor {
                    key, all_tg_pt: all, holder, scope: 0,
                    pr_type: if holder { PrType::WRITE_EXCLUSIVE } else { PrType(0) },
                    relative_target_port: rtp, transport_id: tid,
                }).collect(),
            };
            prop_assert_eq!(FullStatus::parse(&fs.build()), Ok(fs));
        }

        #[test]
        fn register_and_move_round_trip(rk in any::<u64>(), sk in any::<u64>(), unreg in any::<bool>(), rtp in any::<u16>(), tid in arb_tid()) {
            let p = RegisterAndMoveParams { reservation_key: rk, service_action_key: sk, unreg, aptpl: false, relative_target_port: rtp, transport_id: tid };
            prop_assert_eq!(RegisterAndMoveParams::parse(&p.build()), Ok(p));
        }

        #[test]
        fn pr_out_params_round_trip(rk in any::<u64>(), sk in any::<u64>(), all in any::<bool>(), aptpl in any::<bool>(),
                                    tids in proptest::collection::vec(arb_tid(), 0..3)) {
            let p = PrOutParams { reservation_key: rk, service_action_key: sk, spec_i_pt: !tids.is_empty(),
                all_tg_pt: all, aptpl, transport_ids: tids };
            prop_assert_eq!(PrOutParams::parse(&p.build(), PrOutAction::REGISTER), Ok(p));
        }

        #[test]
        fn reservation_and_caps_round_trip(gen in any::<u32>(), key in any::<u64>(), t in 0u8..16, held in any::<bool>(),
                                           flags in any::<[bool; 6]>(), ac in 0u8..8, mask in any::<u16>()) {
            let rr = ReadReservation { generation: gen, reservation: held.then_some(ReservationInfo { key, scope: 0, pr_type: PrType(t) }) };
            prop_assert_eq!(ReadReservation::parse(&rr.build()), Ok(rr));
            let c = Capabilities { crh: flags[0], sip_c: flags[1], atp_c: flags[2], ptpl_c: flags[3], tmv: flags[4],
                allow_commands: ac, ptpl_a: flags[5], type_mask: mask };
            prop_assert_eq!(Capabilities::parse(&c.build()), Ok(c));
        }

        #[test]
        fn read_keys_round_trip(gen in any::<u32>(), keys in proptest::collection::vec(any::<u64>(), 0..8)) {
            let rk = ReadKeys { generation: gen, keys };
            prop_assert_eq!(ReadKeys::parse(&rk.build()), Ok(rk));
        }
    }
}
