//! The `data` of the control plane's replies (`mpath show … --json`), as types.
//!
//! The daemon builds each reply's data as one of these and serializes it; clients (the
//! CLI, `mpath bench`, scripts in Rust) read it back with [`crate::Response::parse`]. The
//! field names are the JSON keys scripts use: renaming one is a breaking change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::timeline::TimelineEvent;

/// A failed request's data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}

/// A request that changed something and has nothing more to say.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Done {}

/// `show topology`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Topology {
    pub maps: Vec<TopologyMap>,
}

/// One map of `show topology`: what `multipath -ll` gives.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopologyMap {
    pub name: String,
    pub wwid: String,
    pub vendor: String,
    pub product: String,
    /// Bytes.
    pub size: u64,
    pub queue_if_no_path: bool,
    /// `alua` or empty.
    pub hwhandler: String,
    pub selector: String,
    /// Requests queued for want of a usable path.
    pub queued: usize,
    pub groups: Vec<TopologyGroup>,
    /// Policy changes from a reconfigure waiting for the map to be re-created.
    pub pending_policy: Option<String>,
}

/// A path group of `show topology`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopologyGroup {
    /// 1-based, as multipathd counts.
    pub group: usize,
    pub priority: u32,
    /// `active`, `enabled` or `disabled`.
    pub status: String,
    pub paths: Vec<TopologyPath>,
}

/// A path of `show topology`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopologyPath {
    pub path: String,
    pub portal: String,
    pub target: String,
    pub lun: u16,
    pub tsih: u16,
    /// `active` or `failed`.
    pub dm_state: String,
    pub checker_state: String,
    pub connection: String,
    pub priority: u32,
    pub last_failure: Option<String>,
    pub operator_failed: bool,
}

/// `show paths`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Paths {
    pub paths: Vec<PathRow>,
}

/// A row of `show paths`: multipathd's columns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathRow {
    pub path: String,
    pub target: String,
    pub priority: u32,
    /// `active`, `failed`, `-` (in no map) or `?` (its map did not answer).
    pub dm_state: String,
    pub checker_state: String,
    pub connection: String,
    pub next_check_s: f64,
    /// The map, or `-`.
    pub map: String,
    pub note: String,
    pub last_failure: Option<String>,
    /// Smoothed checker latency.
    pub latency_us: Option<u64>,
}

/// `show maps`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Maps {
    pub maps: Vec<MapRow>,
}

/// A row of `show maps`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapRow {
    pub name: String,
    pub wwid: String,
    /// Bytes.
    pub size: u64,
    pub block_size: u32,
    pub active_paths: usize,
    pub paths: usize,
    pub queued: usize,
    /// `ok`, `degraded (1/2 paths)`, `queueing …`...
    pub state: String,
    /// The host's block devices for the map (`ublkb0`, `nbd0`), or `-`.
    pub device: String,
}

/// `show status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub uptime_s: u64,
    pub maps: usize,
    pub paths: usize,
    pub sessions: usize,
    pub sessions_up: usize,
    /// Paths by the checker state in force (`ready`, `down`...).
    pub paths_by_checker: BTreeMap<String, usize>,
    /// Paths in maps by their map's view (`active`, `failed`).
    pub paths_by_dm_state: BTreeMap<String, usize>,
    pub unreachable_portals: Vec<PortalError>,
    pub sessions_down: Vec<SessionDown>,
}

/// A portal whose discovery has not succeeded yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortalError {
    pub portal: String,
    pub error: String,
}

/// A session that is not up, and why.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionDown {
    pub portal: String,
    pub target: String,
    pub state: String,
}

/// `show stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub maps: Vec<MapStats>,
    /// How the quantiles are computed (the histogram's bucket bounds).
    pub latency_resolution: String,
}

/// One map's I/O counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapStats {
    pub map: String,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub requeues: u64,
    pub no_path_seconds: f64,
    pub in_doubt_writes: u64,
    pub fenced_writes: u64,
    /// Reads issued on a second path while their first attempt was outstanding.
    pub hedged_reads: u64,
    /// Of those, how many the second path answered first.
    pub hedges_won: u64,
    pub latency: Latency,
    /// By operation (`read`, `write`, `flush`...).
    pub latency_by_op: BTreeMap<String, Latency>,
    pub paths: Vec<PathStats>,
}

/// One path's I/O counters within its map.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathStats {
    pub path: String,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub requeues: u64,
    pub busy: u64,
    /// Reads that waited past this path's hedge deadline (and went to another path too).
    pub hedged_reads: u64,
    pub latency: Latency,
}

/// A latency distribution: exact count, sum and mean; interpolated quantiles.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub sum_seconds: f64,
    pub mean_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// `show events` (and each line of `show events --follow --json` is one event).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<TimelineEvent>,
}

/// `show sessions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    pub sessions: Vec<SessionRow>,
}

/// One iSCSI session, as `iscsiadm -m session -P 3` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionRow {
    pub portal: String,
    pub target: String,
    pub tpgt: Option<u16>,
    /// `0x` and 12 hex digits.
    pub isid: Option<String>,
    pub tsih: Option<u16>,
    pub state: String,
    pub state_reason: Option<String>,
    pub initiator: String,
    pub logins: u64,
    pub connection_failures: u64,
    pub last_failure: Option<Failure>,
    pub commands: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub srtt_us: u64,
    pub negotiated: Option<Negotiated>,
    pub paths: Vec<SessionPath>,
}

/// When and why something last failed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failure {
    /// RFC 3339.
    pub time: String,
    pub reason: String,
}

/// A session's negotiated parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Negotiated {
    /// `CRC32C` or `None`.
    pub header_digest: String,
    pub data_digest: String,
    pub max_recv_data_segment_length: u32,
    pub max_xmit_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u16,
    pub max_connections: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

/// A path a session serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionPath {
    pub path: String,
    pub lun: u16,
    pub map: Option<String>,
    pub dm_state: String,
    pub checker_state: String,
}

/// `login`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Login {
    pub portal: String,
    /// The targets with a session up through the portal.
    pub targets: Vec<String>,
}

/// `logout`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Logout {
    pub portal: String,
    pub target: Option<String>,
    pub sessions: usize,
    /// Paths that left their maps.
    pub paths: usize,
}

/// `fail path`, `reinstate path`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathDone {
    pub path: String,
}

/// `reconfigure`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reconfigured {
    /// What changed, one line each.
    pub summary: String,
}

/// `persist MAP keys`: the registered keys (hex).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrKeys {
    pub generation: u32,
    pub keys: Vec<String>,
}

/// `persist MAP reservation`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrReservation {
    pub generation: u32,
    pub reservation: Option<PrHolder>,
}

/// The reservation held on a LU.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrHolder {
    /// Hex, `0x…`.
    pub key: String,
    /// The SPC-4 type code (1, 3, 5–8).
    #[serde(rename = "type")]
    pub kind: u8,
    pub type_name: String,
}

/// `persist MAP capabilities` (REPORT CAPABILITIES).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrCapabilities {
    pub crh: bool,
    pub sip_c: bool,
    pub atp_c: bool,
    pub ptpl_c: bool,
    pub ptpl_a: bool,
    /// Supported reservation types, by name.
    pub types: Vec<String>,
}

/// `persist MAP register|unregister`: the key and what each path said.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrRegistered {
    pub key: String,
    pub paths: Vec<String>,
}

/// `persist MAP release`: on how many paths.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrReleased {
    pub paths: usize,
}

/// `show path PATH`: everything known about one path (the text prints the fields in this
/// order, `key: value`). Also the columns `show paths format` lays out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathRecord {
    pub path: String,
    pub portal: String,
    pub target: String,
    pub lun: u16,
    pub map: Option<String>,
    pub dm_state: String,
    pub checker_state: String,
    pub connection: String,
    pub tsih: u16,
    pub priority: u32,
    /// 1-based.
    pub group: Option<usize>,
    pub in_flight: Option<usize>,
    pub failures: Option<u64>,
    pub last_failure: Option<String>,
    pub operator_failed: bool,
    /// Seconds a flapping path is still held failed.
    pub held_s: Option<f64>,
    pub state_since_s: Option<f64>,
    pub last_check_s_ago: Option<f64>,
    pub next_check_s: f64,
    pub latency_us: Option<u64>,
    /// Why the path is in no map.
    pub excluded: Option<String>,
    pub wwid: Option<String>,
    pub serial: Option<String>,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Bytes.
    pub size: u64,
    pub block_size: u32,
    pub target_port_group: Option<u16>,
    pub relative_target_port: Option<u16>,
    pub alua_state: Option<String>,
    pub alua_preferred: bool,
    pub session_logins: u64,
    pub session_failures: u64,
    pub session_commands: u64,
    pub session_srtt_us: u64,
}

/// `show map MAP`: its topology, its `show maps` row and the policy in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapRecord {
    #[serde(flatten)]
    pub topology: TopologyMap,
    pub block_size: u32,
    pub active_paths: usize,
    pub paths: usize,
    pub state: String,
    pub device: String,
    /// The policy in force (absent when the map's engine did not answer).
    pub grouping: Option<String>,
    pub failback: Option<String>,
    pub no_path_retry: Option<String>,
}

/// `show config`: the configuration in force, as TOML text and as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Config {
    pub text: String,
    pub config: serde_json::Value,
}
