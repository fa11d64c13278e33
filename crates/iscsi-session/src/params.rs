//! Negotiated operational parameters (RFC 7143 §13), the result of a login.
//!
//! Defaults are RFC 7143's: they are what holds for any key the two sides did not negotiate.

/// Normal or Discovery session (`SessionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

/// Session-wide parameters (one value per session, negotiated on its leading connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Empty for discovery sessions.
    pub target_name: String,
    pub target_alias: Option<String>,
    pub target_portal_group_tag: u16,
    /// `MaxConnections` (1..=65535), min of both.
    pub max_connections: u16,
    /// `InitialR2T`: OR of both — when true the initiator sends no unsolicited Data-Out.
    pub initial_r2t: bool,
    /// `ImmediateData`: AND of both.
    pub immediate_data: bool,
    /// `MaxBurstLength` (512..=2^24-1), min of both: most bytes in one Data-In or solicited
    /// Data-Out sequence.
    pub max_burst_length: u32,
    /// `FirstBurstLength` (512..=2^24-1), min of both, never above MaxBurstLength: most
    /// unsolicited bytes (immediate + unsolicited Data-Out) of a write.
    pub first_burst_length: u32,
    /// `DefaultTime2Wait` seconds, max of both.
    pub default_time2wait: u16,
    /// `DefaultTime2Retain` seconds, min of both.
    pub default_time2retain: u16,
    /// `MaxOutstandingR2T` (1..=65535), min of both: R2Ts outstanding per task.
    pub max_outstanding_r2t: u16,
    /// `DataPDUInOrder`: OR of both.
    pub data_pdu_in_order: bool,
    /// `DataSequenceInOrder`: OR of both.
    pub data_sequence_in_order: bool,
    /// `ErrorRecoveryLevel`, min of both (mpath offers 0).
    pub error_recovery_level: u8,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: String::new(),
            target_alias: None,
            target_portal_group_tag: 1,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// Connection-only parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionParams {
    /// `HeaderDigest=CRC32C` negotiated.
    pub header_digest: bool,
    /// `DataDigest=CRC32C` negotiated.
    pub data_digest: bool,
    /// The MaxRecvDataSegmentLength *we* declared: the largest data segment we accept.
    pub max_recv_data_segment_length: u32,
    /// The MaxRecvDataSegmentLength the *peer* declared: the largest data segment we may send.
    pub max_send_data_segment_length: u32,
}

impl Default for ConnectionParams {
    fn default() -> Self {
        ConnectionParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: iscsi_pdu::DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_send_data_segment_length: iscsi_pdu::DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
        }
    }
}

impl ConnectionParams {
    /// The digests this connection uses in full feature phase.
    pub fn digests(&self) -> iscsi_pdu::Digests {
        iscsi_pdu::Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}
