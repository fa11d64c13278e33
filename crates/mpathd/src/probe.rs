//! What the daemon asks a path beyond `iscsi_initiator::probe`: the identity of a LU
//! behind an ALUA standby or unavailable port (which refuses READ CAPACITY, so the
//! initiator's probe fails as a whole), and the ALUA state alone for the checker's
//! refresh (REPORT TARGET PORT GROUPS answers in every state).

use block::{DataPhase, IoError, IoErrorKind, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::probe::{self, LuInfo};
use iscsi_initiator::IscsiPath;
use scsi::alua::TargetPortGroupsData;
use scsi::cdb::build;
use scsi::inquiry::{
    Association, DesignatorType, DeviceIdentification, StandardInquiry, UnitSerialNumber,
};
use scsi::AluaState;

fn req(cdb: build::Cdb, len: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(cdb.as_bytes()),
        data: DataPhase::In { len },
    }
}

/// The command was refused because this path's ALUA group is standby, unavailable or
/// transitioning (NOT READY 04/0a-0c): the LU is there, this port does not serve it now.
pub(crate) fn alua_inaccessible(e: &IoError) -> bool {
    e.scsi
        .as_ref()
        .and_then(|s| scsi::Sense::decode(&s.sense).ok())
        .is_some_and(|s| s.is_alua_inaccessible())
}

/// Identity without capacity: INQUIRY, VPD 0x80 and 0x83, REPORT TARGET PORT GROUPS.
/// `blocks` and `block_size` are 0 (unknown): the path takes its map's.
pub(crate) async fn probe_inaccessible(path: &IscsiPath) -> Result<LuInfo, IoError> {
    let d = path.command(req(build::inquiry(None, 96), 96)).await?;
    let inq = StandardInquiry::parse(&d)
        .map_err(|e| IoError::new(IoErrorKind::Target, format!("INQUIRY data: {e}")))?;
    let mut info = LuInfo {
        lun: path.lun(),
        vendor: inq.vendor.trim().to_string(),
        product: inq.product.trim().to_string(),
        revision: inq.revision.trim().to_string(),
        device_type: inq.device_type.0,
        block_size: 0,
        blocks: 0,
        wwid: None,
        serial: None,
        tpgs: inq.tpgs,
        relative_target_port: None,
        target_port_group: None,
        alua: None,
        thin: false,
        max_transfer_blocks: 0,
        max_unmap_blocks: 0,
        max_write_same_blocks: 0,
        write_cache: true,
        fua: false,
        write_cache_unknown: true,
    };
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
            info.wwid = probe::wwid(&id);
            for des in &id.designators {
                if des.association != Association::TARGET_PORT || des.value.len() < 4 {
                    continue;
                }
                let v = Some(u16::from_be_bytes([des.value[2], des.value[3]]));
                if des.designator_type == DesignatorType::RELATIVE_TARGET_PORT {
                    info.relative_target_port = v;
                } else if des.designator_type == DesignatorType::TARGET_PORT_GROUP {
                    info.target_port_group = v;
                }
            }
        }
    }
    if info.tpgs != 0 {
        info.alua = alua_state(path, &info).await;
    }
    Ok(info)
}

/// This path's ALUA state and preferred bit now (REPORT TARGET PORT GROUPS), matched by
/// the path's target port group or relative target port.
pub(crate) async fn alua_state(path: &IscsiPath, lu: &LuInfo) -> Option<(AluaState, bool)> {
    let d = path
        .command(req(build::report_target_port_groups(false, 4096), 4096))
        .await
        .ok()?;
    let r = TargetPortGroupsData::parse(&d).ok()?;
    r.groups
        .iter()
        .find(|g| {
            Some(g.id) == lu.target_port_group
                || lu
                    .relative_target_port
                    .is_some_and(|p| g.relative_target_ports.contains(&p))
        })
        .map(|g| (g.state, g.preferred))
}
