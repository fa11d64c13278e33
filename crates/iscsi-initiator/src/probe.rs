//! What a LU is, asked through a path: the questions `mpath iscsi probe` and the daemon ask.

use block::{DataPhase, IoError, IoErrorKind, ScsiRequest};
use bytes::Bytes;
use scsi::alua::TargetPortGroupsData;
use scsi::capacity::ReadCapacity16Data;
use scsi::cdb::build;
use scsi::inquiry::{
    Association, DesignatorType, DeviceIdentification, StandardInquiry, UnitSerialNumber,
};
use scsi::luns::ReportLunsData;
use scsi::AluaState;

use crate::path::IscsiPath;

/// Everything `probe` learns about one LU through one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuInfo {
    pub lun: u16,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Peripheral device type (0 = disk).
    pub device_type: u8,
    /// 0 with `blocks` 0: unknown — this port's ALUA state (standby, unavailable,
    /// transitioning) refuses READ CAPACITY; a port that serves the LU tells.
    pub block_size: u32,
    pub blocks: u64,
    /// READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: a physical block is
    /// 2^n logical blocks ([`LuInfo::physical_block_size`]).
    pub physical_block_exponent: u8,
    /// `3` + the NAA identifier in hex (as Linux multipath prints WWIDs); else the serial.
    pub wwid: Option<String>,
    pub serial: Option<String>,
    /// INQUIRY TPGS: 0 none, 1 implicit, 2 explicit, 3 both.
    pub tpgs: u8,
    pub relative_target_port: Option<u16>,
    pub target_port_group: Option<u16>,
    /// The ALUA state of this path's group, and its preferred bit.
    pub alua: Option<(AluaState, bool)>,
    pub thin: bool,
    /// VPD 0xB0: MAXIMUM TRANSFER LENGTH in blocks (0: no limit reported).
    pub max_transfer_blocks: u32,
    /// VPD 0xB0: MAXIMUM UNMAP LBA COUNT (0: none reported).
    pub max_unmap_blocks: u32,
    /// VPD 0xB0: MAXIMUM WRITE SAME LENGTH (0: none reported).
    pub max_write_same_blocks: u64,
    /// Caching mode page WCE: writes may sit in a volatile cache until SYNCHRONIZE CACHE.
    pub write_cache: bool,
    /// DPOFUA in the mode parameter header: the LU honours FUA.
    pub fua: bool,
    /// The caching mode page could not be read: `write_cache` is assumed on (safe: FUA and
    /// FLUSH then go to the LU).
    pub write_cache_unknown: bool,
}

impl LuInfo {
    /// The physical block size in bytes: the logical one times 2^exponent, the logical one
    /// when the exponent is absurd (a physical block of more than 64 KiB, or an overflow).
    pub fn physical_block_size(&self) -> u32 {
        let bs = self.block_size;
        match bs.checked_shl(u32::from(self.physical_block_exponent)) {
            Some(p) if p <= 64 << 10 && p >= bs => p,
            _ => bs,
        }
    }
}

fn req(cdb: scsi::cdb::build::Cdb, len: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(cdb.as_bytes()),
        data: DataPhase::In { len },
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> IoError {
    IoError::new(IoErrorKind::Target, format!("{what}: {e}"))
}

/// LUNs the target reports through this path (REPORT LUNS is answered for any LUN).
pub async fn report_luns(path: &IscsiPath) -> Result<Vec<u16>, IoError> {
    let d = path
        .command(req(build::report_luns(0, 16384), 16384))
        .await?;
    let r = ReportLunsData::parse(&d).map_err(|e| bad("REPORT LUNS data", e))?;
    Ok(r.luns.iter().map(|l| l.0).collect())
}

/// The command was refused because this path's ALUA group is standby, unavailable or
/// transitioning (NOT READY 04/0a-0c): the LU is there, this port does not serve it now.
pub fn alua_inaccessible(e: &IoError) -> bool {
    matches!(
        e.condition(),
        Some(
            block::Condition::AluaStandby
                | block::Condition::AluaUnavailable
                | block::Condition::AluaTransitioning
        )
    )
}

/// INQUIRY, VPD 0x80/0x83, READ CAPACITY(16) and, with ALUA, REPORT TARGET PORT GROUPS.
/// Through a standby or unavailable port the capacity is unknown (`blocks` 0).
pub async fn probe_lu(path: &IscsiPath) -> Result<LuInfo, IoError> {
    let d = path.command(req(build::inquiry(None, 96), 96)).await?;
    let inq = StandardInquiry::parse(&d).map_err(|e| bad("INQUIRY data", e))?;
    // Only direct-access LUs (type 0) have a capacity; others (a controller LUN 0) do not.
    let cap = if inq.device_type.0 == 0 {
        match path.command(req(build::read_capacity_16(32), 32)).await {
            Ok(d) => {
                Some(ReadCapacity16Data::parse(&d).map_err(|e| bad("READ CAPACITY(16) data", e))?)
            }
            // A standby or unavailable port refuses media access: the LU is there, its
            // capacity is for a port that serves it to tell.
            Err(e) if alua_inaccessible(&e) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let cap = cap.unwrap_or(ReadCapacity16Data {
        last_lba: u64::MAX,
        block_len: 0,
        p_type: 0,
        prot_en: false,
        p_i_exponent: 0,
        lbppbe: 0,
        lbpme: false,
        lbprz: false,
        lowest_aligned_lba: 0,
    });
    let mut info = LuInfo {
        lun: path.lun(),
        vendor: inq.vendor.trim().to_string(),
        product: inq.product.trim().to_string(),
        revision: inq.revision.trim().to_string(),
        device_type: inq.device_type.0,
        block_size: cap.block_len,
        blocks: cap.last_lba.wrapping_add(1),
        physical_block_exponent: cap.lbppbe,
        wwid: None,
        serial: None,
        tpgs: inq.tpgs,
        relative_target_port: None,
        target_port_group: None,
        alua: None,
        thin: cap.lbpme,
        max_transfer_blocks: 0,
        max_unmap_blocks: 0,
        max_write_same_blocks: 0,
        write_cache: true,
        fua: false,
        write_cache_unknown: true,
    };
    if info.device_type == 0 {
        if let Ok(d) = path.command(req(build::inquiry(Some(0xb0), 64), 64)).await {
            if let Ok(b) = scsi::inquiry::BlockLimits::parse(&d) {
                info.max_transfer_blocks = b.max_transfer;
                info.max_unmap_blocks = b.max_unmap_lba_count;
                info.max_write_same_blocks = b.max_write_same;
            }
        }
        // MODE SENSE(10), caching page, current values.
        if let Ok(d) = path
            .command(req(build::mode_sense_10(true, 0, 0x08, 0, 255), 255))
            .await
        {
            if let Ok(m) = scsi::mode::ModeParameters::parse(&d, true) {
                info.fua = m.device_specific & 0x10 != 0;
                for p in &m.pages {
                    if let scsi::mode::ModePage::Caching(c) = p {
                        info.write_cache = c.wce;
                        info.write_cache_unknown = false;
                    }
                }
            }
        }
    }
    if let Ok(d) = path
        .command(req(build::inquiry(Some(0x80), 255), 255))
        .await
    {
        if let Ok(s) = UnitSerialNumber::parse(&d) {
            info.serial = Some(s.serial.trim().to_string());
        }
    }
    if let Ok(d) = path
        .command(req(build::inquiry(Some(0x83), 1024), 1024))
        .await
    {
        if let Ok(id) = DeviceIdentification::parse(&d) {
            info.wwid = wwid(&id);
            for des in &id.designators {
                match (des.association, des.designator_type) {
                    (Association::TARGET_PORT, DesignatorType::RELATIVE_TARGET_PORT)
                        if des.value.len() >= 4 =>
                    {
                        info.relative_target_port =
                            Some(u16::from_be_bytes([des.value[2], des.value[3]]));
                    }
                    (Association::TARGET_PORT, DesignatorType::TARGET_PORT_GROUP)
                        if des.value.len() >= 4 =>
                    {
                        info.target_port_group =
                            Some(u16::from_be_bytes([des.value[2], des.value[3]]));
                    }
                    _ => {}
                }
            }
        }
    }
    if info.tpgs != 0 {
        if let Ok(d) = path
            .command(req(build::report_target_port_groups(false, 4096), 4096))
            .await
        {
            if let Ok(r) = TargetPortGroupsData::parse(&d) {
                let mine = r.groups.iter().find(|g| {
                    Some(g.id) == info.target_port_group
                        || info
                            .relative_target_port
                            .is_some_and(|p| g.relative_target_ports.contains(&p))
                });
                if let Some(g) = mine {
                    info.alua = Some((g.state, g.preferred));
                    info.target_port_group.get_or_insert(g.id);
                }
            }
        }
    }
    Ok(info)
}

/// The LU's WWID from its VPD 0x83 designators, chosen as Linux's `scsi_id` does so that
/// mpath and Linux multipath name the same LU the same way: NAA IEEE Registered Extended,
/// then Registered, then other NAA, EUI-64, SCSI name string, T10 vendor ID. Binary
/// designators print as their type digit (`3` for NAA, `2` for EUI-64) followed by hex;
/// names and T10 IDs as `8` / `1` followed by the text.
pub fn wwid(id: &DeviceIdentification) -> Option<String> {
    let rank = |d: &scsi::inquiry::Designator| -> Option<u8> {
        if d.association != Association::LOGICAL_UNIT {
            return None;
        }
        Some(match d.designator_type {
            DesignatorType::NAA => match d.value.first().map(|b| b >> 4) {
                Some(6) => 0,
                Some(5) => 1,
                _ => 2,
            },
            DesignatorType::EUI64 => 3,
            DesignatorType::SCSI_NAME_STRING => 4,
            DesignatorType::T10_VENDOR_ID => 5,
            _ => return None,
        })
    };
    let best = id
        .designators
        .iter()
        .filter_map(|d| rank(d).map(|r| (r, d)))
        .min_by_key(|(r, _)| *r)?
        .1;
    let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |v: &[u8]| {
        String::from_utf8_lossy(v)
            .trim_end_matches('\0')
            .trim()
            .replace(' ', "_")
    };
    Some(match best.designator_type {
        DesignatorType::NAA => format!("3{}", hex(&best.value)),
        DesignatorType::EUI64 => format!("2{}", hex(&best.value)),
        DesignatorType::SCSI_NAME_STRING => format!("8{}", text(&best.value)),
        _ => format!("1{}", text(&best.value)),
    })
}

/// A human name for an ALUA state.
pub fn alua_name(s: AluaState) -> &'static str {
    match s {
        AluaState::ACTIVE_OPTIMIZED => "active/optimized",
        AluaState::ACTIVE_NON_OPTIMIZED => "active/non-optimized",
        AluaState::STANDBY => "standby",
        AluaState::UNAVAILABLE => "unavailable",
        AluaState::TRANSITIONING => "transitioning",
        AluaState::OFFLINE => "offline",
        AluaState::LBA_DEPENDENT => "lba-dependent",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lu(block_size: u32, exponent: u8) -> LuInfo {
        LuInfo {
            lun: 0,
            vendor: String::new(),
            product: String::new(),
            revision: String::new(),
            device_type: 0,
            block_size,
            blocks: 1,
            physical_block_exponent: exponent,
            wwid: None,
            serial: None,
            tpgs: 0,
            relative_target_port: None,
            target_port_group: None,
            alua: None,
            thin: false,
            max_transfer_blocks: 0,
            max_unmap_blocks: 0,
            max_write_same_blocks: 0,
            write_cache: true,
            fua: false,
            write_cache_unknown: false,
        }
    }

    #[test]
    fn the_physical_block_is_two_to_the_exponent_logical_blocks() {
        assert_eq!(lu(512, 0).physical_block_size(), 512);
        // 512e: 4 KiB physical sectors behind 512-byte logical ones.
        assert_eq!(lu(512, 3).physical_block_size(), 4096);
        assert_eq!(lu(4096, 0).physical_block_size(), 4096);
        // Absurd exponents fall back to the logical size.
        assert_eq!(lu(512, 15).physical_block_size(), 512);
        assert_eq!(lu(4096, 15).physical_block_size(), 4096);
        // A port that does not know the capacity.
        assert_eq!(lu(0, 3).physical_block_size(), 0);
    }
}
