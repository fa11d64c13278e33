//! CDB builders for the initiator side.
//!
//! Each returns a [`Cdb`]: the command bytes zero-padded to the 16 bytes an
//! iSCSI SCSI Command PDU carries, plus the command's real length.

use std::fmt;

use crate::alua::AluaState;
use crate::cdb::{
    OpCode, SA_GET_LBA_STATUS, SA_READ_CAPACITY_16, SA_REPORT_SUPPORTED_OPCODES,
    SA_REPORT_TARGET_PORT_GROUPS, SA_SET_TARGET_PORT_GROUPS,
};
use crate::codec::PutBe;
use crate::pr::{PrInAction, PrOutAction, PrType};

/// A built CDB.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; 16],
    len: u8,
}

impl Cdb {
    fn new(op: OpCode, len: u8) -> Cdb {
        let mut bytes = [0u8; 16];
        bytes[0] = op.0;
        Cdb { bytes, len }
    }

    /// The CDB proper (6, 10, 12 or 16 bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Zero-padded to 16 bytes, as the iSCSI BHS CDB field wants it.
    pub fn to_array(&self) -> [u8; 16] {
        self.bytes
    }

    pub fn opcode(&self) -> OpCode {
        OpCode(self.bytes[0])
    }

    fn set16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn set32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn set64(&mut self, at: usize, v: u64) {
        self.bytes[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
}

impl std::ops::Deref for Cdb {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cdb(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

pub fn test_unit_ready() -> Cdb {
    Cdb::new(OpCode::TEST_UNIT_READY, 6)
}

/// REQUEST SENSE; `desc` asks for descriptor-format sense.
pub fn request_sense(desc: bool, alloc_len: u8) -> Cdb {
    let mut c = Cdb::new(OpCode::REQUEST_SENSE, 6);
    c.bytes[1] = u8::from(desc);
    c.bytes[4] = alloc_len;
    c
}

/// INQUIRY: standard data when `vpd_page` is `None`, else that VPD page.
pub fn inquiry(vpd_page: Option<u8>, alloc_len: u16) -> Cdb {
    let mut c = Cdb::new(OpCode::INQUIRY, 6);
    if let Some(p) = vpd_page {
        c.bytes[1] = 0x01;
        c.bytes[2] = p;
    }
    c.set16(3, alloc_len);
    c
}

pub fn read_capacity_10() -> Cdb {
    Cdb::new(OpCode::READ_CAPACITY_10, 10)
}

pub fn read_capacity_16(alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::SERVICE_ACTION_IN_16, 16);
    c.bytes[1] = SA_READ_CAPACITY_16;
    c.set32(10, alloc_len);
    c
}

pub fn get_lba_status(lba: u64, alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::SERVICE_ACTION_IN_16, 16);
    c.bytes[1] = SA_GET_LBA_STATUS;
    c.set64(2, lba);
    c.set32(10, alloc_len);
    c
}

pub fn report_luns(select_report: u8, alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::REPORT_LUNS, 12);
    c.bytes[2] = select_report;
    c.set32(6, alloc_len);
    c
}

fn dpo_fua(dpo: bool, fua: bool) -> u8 {
    (u8::from(dpo) << 4) | (u8::from(fua) << 3)
}

pub fn read_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::READ_10, 10);
    c.bytes[1] = dpo_fua(false, fua);
    c.set32(2, lba);
    c.set16(7, blocks);
    c
}

pub fn read_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::READ_16, 16);
    c.bytes[1] = dpo_fua(false, fua);
    c.set64(2, lba);
    c.set32(10, blocks);
    c
}

pub fn write_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::WRITE_10, 10);
    c.bytes[1] = dpo_fua(false, fua);
    c.set32(2, lba);
    c.set16(7, blocks);
    c
}

pub fn write_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::WRITE_16, 16);
    c.bytes[1] = dpo_fua(false, fua);
    c.set64(2, lba);
    c.set32(10, blocks);
    c
}

/// VERIFY(16); `bytchk` 0 (medium only), 1 (compare) or 3 (one block).
pub fn verify_16(lba: u64, blocks: u32, bytchk: u8) -> Cdb {
    let mut c = Cdb::new(OpCode::VERIFY_16, 16);
    c.bytes[1] = (bytchk & 0x03) << 1;
    c.set64(2, lba);
    c.set32(10, blocks);
    c
}

/// COMPARE AND WRITE: Data-Out carries `blocks` blocks to compare followed
/// by `blocks` blocks to write.
pub fn compare_and_write(lba: u64, blocks: u8, fua: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::COMPARE_AND_WRITE, 16);
    c.bytes[1] = dpo_fua(false, fua);
    c.set64(2, lba);
    c.bytes[13] = blocks;
    c
}

/// SYNCHRONIZE CACHE(10); `blocks` 0 means "to the end of the medium".
pub fn synchronize_cache_10(lba: u32, blocks: u16, immed: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::SYNCHRONIZE_CACHE_10, 10);
    c.bytes[1] = u8::from(immed) << 1;
    c.set32(2, lba);
    c.set16(7, blocks);
    c
}

pub fn synchronize_cache_16(lba: u64, blocks: u32, immed: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::SYNCHRONIZE_CACHE_16, 16);
    c.bytes[1] = u8::from(immed) << 1;
    c.set64(2, lba);
    c.set32(10, blocks);
    c
}

/// REPORT TARGET PORT GROUPS; `extended` asks for the extended header.
pub fn report_target_port_groups(extended: bool, alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::MAINTENANCE_IN, 12);
    c.bytes[1] = (u8::from(extended) << 5) | SA_REPORT_TARGET_PORT_GROUPS;
    c.set32(6, alloc_len);
    c
}

/// SET TARGET PORT GROUPS; the parameter list comes from
/// [`set_target_port_groups_params`].
pub fn set_target_port_groups(param_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::MAINTENANCE_OUT, 12);
    c.bytes[1] = SA_SET_TARGET_PORT_GROUPS;
    c.set32(6, param_len);
    c
}

/// SET TARGET PORT GROUPS parameter list: (group id, requested state).
pub fn set_target_port_groups_params(groups: &[(u16, AluaState)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 4 * groups.len());
    v.put_zeros(4);
    for &(id, state) in groups {
        v.push(state.0 & 0x0f);
        v.push(0);
        v.put_u16(id);
    }
    v
}

/// REPORT SUPPORTED OPERATION CODES. `options` 0: all commands; 1: one
/// opcode; 2: opcode + service action; 3: opcode, with service action if
/// it has them.
pub fn report_supported_operation_codes(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    alloc_len: u32,
) -> Cdb {
    let mut c = Cdb::new(OpCode::MAINTENANCE_IN, 12);
    c.bytes[1] = SA_REPORT_SUPPORTED_OPCODES;
    c.bytes[2] = (u8::from(rctd) << 7) | (options & 0x07);
    c.bytes[3] = opcode;
    c.set16(4, service_action);
    c.set32(6, alloc_len);
    c
}

/// UNMAP; the parameter list comes from [`unmap_params`].
pub fn unmap(param_len: u16) -> Cdb {
    let mut c = Cdb::new(OpCode::UNMAP, 10);
    c.set16(7, param_len);
    c
}

/// UNMAP parameter list from (LBA, number of blocks) descriptors.
pub fn unmap_params(ranges: &[(u64, u32)]) -> Vec<u8> {
    crate::provisioning::UnmapParams {
        descriptors: ranges.to_vec(),
    }
    .build()
}

/// WRITE SAME(16). With `ndob` no Data-Out is sent and zeroes are written.
pub fn write_same_16(lba: u64, blocks: u32, unmap: bool, ndob: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::WRITE_SAME_16, 16);
    c.bytes[1] = (u8::from(unmap) << 3) | u8::from(ndob);
    c.set64(2, lba);
    c.set32(10, blocks);
    c
}

/// MODE SENSE(10) with page control `pc` (0 current, 1 changeable,
/// 2 default, 3 saved).
pub fn mode_sense_10(dbd: bool, pc: u8, page: u8, subpage: u8, alloc_len: u16) -> Cdb {
    let mut c = Cdb::new(OpCode::MODE_SENSE_10, 10);
    c.bytes[1] = u8::from(dbd) << 3;
    c.bytes[2] = ((pc & 0x03) << 6) | (page & 0x3f);
    c.bytes[3] = subpage;
    c.set16(7, alloc_len);
    c
}

pub fn mode_sense_6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc_len: u8) -> Cdb {
    let mut c = Cdb::new(OpCode::MODE_SENSE_6, 6);
    c.bytes[1] = u8::from(dbd) << 3;
    c.bytes[2] = ((pc & 0x03) << 6) | (page & 0x3f);
    c.bytes[3] = subpage;
    c.bytes[4] = alloc_len;
    c
}

/// MODE SELECT(10) with PF set (the only page format we speak).
pub fn mode_select_10(param_len: u16) -> Cdb {
    let mut c = Cdb::new(OpCode::MODE_SELECT_10, 10);
    c.bytes[1] = 0x10;
    c.set16(7, param_len);
    c
}

pub fn persistent_reserve_in(action: PrInAction, alloc_len: u16) -> Cdb {
    let mut c = Cdb::new(OpCode::PERSISTENT_RESERVE_IN, 10);
    c.bytes[1] = action.0 & 0x1f;
    c.set16(7, alloc_len);
    c
}

/// PERSISTENT RESERVE OUT with LU scope; the parameter list comes from
/// [`crate::pr::PrOutParams::build`].
pub fn persistent_reserve_out(action: PrOutAction, pr_type: PrType, param_len: u32) -> Cdb {
    let mut c = Cdb::new(OpCode::PERSISTENT_RESERVE_OUT, 10);
    c.bytes[1] = action.0 & 0x1f;
    c.bytes[2] = pr_type.0 & 0x0f;
    c.set32(5, param_len);
    c
}

pub fn start_stop_unit(start: bool, loej: bool) -> Cdb {
    let mut c = Cdb::new(OpCode::START_STOP_UNIT, 6);
    c.bytes[4] = (u8::from(loej) << 1) | u8::from(start);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{Command, ReadWrite, WriteSameParams};
    use proptest::prelude::*;

    #[test]
    fn fixtures() {
        assert_eq!(test_unit_ready().as_bytes(), &[0u8; 6]);
        assert_eq!(
            inquiry(Some(0x83), 0x200).as_bytes(),
            &[0x12, 0x01, 0x83, 0x02, 0x00, 0x00]
        );
        assert_eq!(
            read_capacity_16(32).as_bytes(),
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(
            report_target_port_groups(true, 0x1000).as_bytes(),
            &[0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
        );
        assert_eq!(
            write_10(1, 2, true).to_array()[..10],
            [0x2a, 0x08, 0, 0, 0, 1, 0, 0, 2, 0]
        );
    }

    proptest! {
        #[test]
        fn read_write_round_trip(lba in any::<u64>(), blocks in any::<u32>(), fua in any::<bool>()) {
            let rw = ReadWrite { lba, blocks, dpo: false, fua };
            prop_assert_eq!(Command::parse(&read_16(lba, blocks, fua)), Ok(Command::Read(rw)));
            prop_assert_eq!(Command::parse(&write_16(lba, blocks, fua)), Ok(Command::Write(rw)));
            let (l10, b10) = (lba as u32, blocks as u16);
            let rw10 = ReadWrite { lba: u64::from(l10), blocks: u32::from(b10), dpo: false, fua };
            prop_assert_eq!(Command::parse(&read_10(l10, b10, fua)), Ok(Command::Read(rw10)));
            prop_assert_eq!(Command::parse(&write_10(l10, b10, fua)), Ok(Command::Write(rw10)));
        }

        #[test]
        fn write_same_round_trip(lba in any::<u64>(), blocks in any::<u32>(), unmap in any::<bool>(), ndob in any::<bool>()) {
            prop_assert_eq!(
                Command::parse(&write_same_16(lba, blocks, unmap, ndob)),
                Ok(Command::WriteSame(WriteSameParams { lba, blocks, unmap, anchor: false, ndob }))
            );
        }

        #[test]
        fn sync_cache_round_trip(lba in any::<u64>(), blocks in any::<u32>(), immed in any::<bool>()) {
            prop_assert_eq!(
                Command::parse(&synchronize_cache_16(lba, blocks, immed)),
                Ok(Command::SynchronizeCache { lba, blocks, immed })
            );
        }

        #[test]
        fn caw_round_trip(lba in any::<u64>(), blocks in any::<u8>(), fua in any::<bool>()) {
            prop_assert_eq!(
                Command::parse(&compare_and_write(lba, blocks, fua)),
                Ok(Command::CompareAndWrite { lba, blocks, dpo: false, fua })
            );
        }

        #[test]
        fn inquiry_round_trip(page in proptest::option::of(any::<u8>()), alloc in any::<u16>()) {
            prop_assert_eq!(
                Command::parse(&inquiry(page, alloc)),
                Ok(Command::Inquiry { evpd: page.is_some(), page_code: page.unwrap_or(0), alloc_len: alloc })
            );
        }

        #[test]
        fn misc_round_trips(alloc in any::<u32>(), lba in any::<u64>(), ext in any::<bool>()) {
            prop_assert_eq!(Command::parse(&read_capacity_16(alloc)), Ok(Command::ReadCapacity16 { alloc_len: alloc }));
            prop_assert_eq!(Command::parse(&get_lba_status(lba, alloc)), Ok(Command::GetLbaStatus { lba, alloc_len: alloc }));
            prop_assert_eq!(
                Command::parse(&report_target_port_groups(ext, alloc)),
                Ok(Command::ReportTargetPortGroups { extended: ext, alloc_len: alloc })
            );
            prop_assert_eq!(Command::parse(&report_luns(2, alloc)), Ok(Command::ReportLuns { select_report: 2, alloc_len: alloc }));
            prop_assert_eq!(Command::parse(&set_target_port_groups(alloc)), Ok(Command::SetTargetPortGroups { param_len: alloc }));
        }

        #[test]
        fn pr_round_trips(sa in 0u8..8, t in any::<u8>(), len in any::<u32>(), ina in 0u8..4, alloc in any::<u16>()) {
            prop_assert_eq!(
                Command::parse(&persistent_reserve_out(PrOutAction(sa), PrType(t & 0x0f), len)),
                Ok(Command::PersistentReserveOut { action: PrOutAction(sa), scope: 0, pr_type: PrType(t & 0x0f), param_len: len })
            );
            prop_assert_eq!(
                Command::parse(&persistent_reserve_in(PrInAction(ina), alloc)),
                Ok(Command::PersistentReserveIn { action: PrInAction(ina), alloc_len: alloc })
            );
        }
    }
}
