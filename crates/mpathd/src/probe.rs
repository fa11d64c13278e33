//! What the daemon asks a path beyond `iscsi_initiator::probe`: the ALUA state alone, for
//! the checker's refresh (REPORT TARGET PORT GROUPS answers in every state).

use block::{DataPhase, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::probe::LuInfo;
use iscsi_initiator::IscsiPath;
use scsi::alua::TargetPortGroupsData;
use scsi::cdb::build;
use scsi::AluaState;

fn req(cdb: build::Cdb, len: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(cdb.as_bytes()),
        data: DataPhase::In { len },
    }
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
