//! The RFC 7143 §13 key table and the §6.2 text negotiation rules, for both roles.
//!
//! A [`Negotiation`] lives for one login (one connection). It reads every complete text the
//! peer sends ([`Negotiation::receive`]): keys the peer offers get our answer (the *responder*
//! rule of each key), keys that answer one of our offers are checked against what we offered
//! (an answer outside the key's result function fails the login) and applied. Keys of the
//! security stage (`AuthMethod`, `CHAP_*`) are handed back untouched for the login's
//! authentication step. [`Negotiation::finish`] applies the integrity rules and yields the
//! [`SessionParams`] and [`ConnectionParams`] in force after the login.
//!
//! What each side wants is a [`Proposal`]; [`Proposal::target`] and [`Proposal::initiator`]
//! are mpath's defaults. Keys nobody offers keep RFC 7143's defaults.
//!
//! Rules worth knowing (RFC 7143 §6.2, §13):
//! - a key appears at most once per text, and is negotiated at most once per login; the
//!   identity declarations (`InitiatorName`, `TargetName`, `SessionType`, `InitiatorAlias`)
//!   may be repeated with the *same* value, because libiscsi repeats them when it moves from the
//!   security to the operational stage;
//! - "Reject", "Irrelevant" and "NotUnderstood" are answers, never offers;
//! - a value outside the key's range, or a list with nothing we support, is answered "Reject"
//!   and the key keeps its current value;
//! - keys that are irrelevant for the session are answered "Irrelevant": normal-session keys
//!   in a discovery session, leading-only (session-wide) keys on a connection added to an
//!   existing session, and `FirstBurstLength` when `InitialR2T=Yes` and `ImmediateData=No`;
//! - unknown keys, including every `X-` and `X#` private key, are answered "NotUnderstood";
//! - the obsolete RFC 3720 marker keys: `IFMarker`/`OFMarker` are answered "No" (RFC 7143's
//!   "Obsoleted Keys" section allows it), `IFMarkInt`/`OFMarkInt` "Reject" (it requires that);
//! - `FirstBurstLength` never exceeds `MaxBurstLength`: checked once all keys are known.

use std::fmt;

use iscsi_pdu::{LoginStatus, TextParams};

use crate::params::{ConnectionParams, SessionParams, SessionType};

/// Which end of the login this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Initiator,
    Target,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Target,
            Role::Target => Role::Initiator,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Initiator => "initiator",
            Role::Target => "target",
        })
    }
}

/// A value of `HeaderDigest` / `DataDigest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digest {
    Crc32c,
    None,
}

impl Digest {
    /// The RFC 7143 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::Crc32c => "CRC32C",
            Digest::None => "None",
        }
    }

    fn parse(s: &str) -> Option<Digest> {
        match s {
            "CRC32C" => Some(Digest::Crc32c),
            "None" => Some(Digest::None),
            _ => None,
        }
    }
}

/// What one side wants from the operational negotiation: its own limits and preferences.
///
/// As an originator (the initiator) these are the values offered; as a responder (the
/// target) they bound the answers. Digest lists are in order of preference; a responder picks
/// the first value of the *offer* that appears in its list, and a result outside the list
/// fails the login (so `vec![Digest::Crc32c]` means "digests required").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub header_digest: Vec<Digest>,
    pub data_digest: Vec<Digest>,
    /// Our `MaxRecvDataSegmentLength` (declared, 512..=2^24-1): the largest data segment we
    /// accept in full feature phase.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u16,
    pub max_connections: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    /// mpath implements error recovery level 0 only; a higher value here is offered but the
    /// session layer will not honour it.
    pub error_recovery_level: u8,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Proposal {
    /// mpath's defaults as a target: large bursts (bounded by the initiator's offers, since
    /// the result functions take the minimum), unsolicited and immediate data allowed, either
    /// digest accepted with the initiator's preference winning.
    pub fn target() -> Proposal {
        Proposal {
            header_digest: vec![Digest::Crc32c, Digest::None],
            data_digest: vec![Digest::Crc32c, Digest::None],
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            // Enough R2Ts in flight per task to keep a 1 MiB burst moving in 64 KiB pieces.
            max_outstanding_r2t: 16,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }

    /// mpath's defaults as an initiator: no digests (TCP's checksum on a local network;
    /// configurable), 1 MiB bursts, immediate and unsolicited data.
    pub fn initiator() -> Proposal {
        Proposal {
            header_digest: vec![Digest::None],
            data_digest: vec![Digest::None],
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// Every key RFC 7143 defines (§12.1.3, §13), plus the obsolete RFC 3720 marker keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    HeaderDigest,
    DataDigest,
    MaxConnections,
    SendTargets,
    TargetName,
    InitiatorName,
    TargetAlias,
    InitiatorAlias,
    TargetAddress,
    TargetPortalGroupTag,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    SessionType,
    AuthMethod,
    TaskReporting,
    IscsiProtocolLevel,
    OFMarker,
    IFMarker,
    OFMarkInt,
    IFMarkInt,
    ChapA,
    ChapI,
    ChapC,
    ChapN,
    ChapR,
}

/// How a key's value is settled (RFC 7143 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// List negotiation: the responder picks the first offered value it supports.
    List,
    /// Numerical, result = the smaller of offer and answer (`lo..=hi` valid).
    Min { lo: u64, hi: u64 },
    /// Numerical, result = the larger of offer and answer.
    Max { lo: u64, hi: u64 },
    /// Boolean, result = offer OR answer.
    Or,
    /// Boolean, result = offer AND answer.
    And,
    /// Declarative: the sender states a value, nobody answers. `range` for numerical ones.
    Declare { range: Option<(u64, u64)> },
    /// Obsolete RFC 3720 key, always given this answer.
    Obsolete { answer: &'static str },
    /// Authentication keys: settled by the security stage (RFC 7143 §12), not here.
    Security,
}

/// Where a key may be used (the "Use" line of RFC 7143 §13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// LO: only on the leading connection of a session (session-wide operational keys).
    LeadingOnly,
    /// IO: during the login of any connection.
    LoginOnly,
    /// ALL: in login and in full feature phase.
    All,
    /// FFPO: only in full feature phase (Text Requests).
    FullFeatureOnly,
}

/// Who may originate a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Senders {
    Initiator,
    Target,
    Both,
}

impl Senders {
    fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Senders::Both, _)
                | (Senders::Initiator, Role::Initiator)
                | (Senders::Target, Role::Target)
        )
    }
}

/// One row of the key table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDef {
    pub rule: Rule,
    pub usage: Usage,
    pub senders: Senders,
    /// "Irrelevant when: SessionType=Discovery".
    pub irrelevant_in_discovery: bool,
}

/// iSCSIProtocolLevel this implementation speaks: RFC 7143 is level 1.
pub const ISCSI_PROTOCOL_LEVEL: u64 = 1;

/// Longest value the text keys we store may have: RFC 7143 §6.1 limits values to 255 bytes
/// unless a key says otherwise (only CHAP binary values do).
pub const MAX_TEXT_VALUE_LEN: usize = 255;

/// 2^24 - 1: the largest DataSegmentLength and burst the protocol can express.
const MAX_24: u64 = (1 << 24) - 1;

const ALL_KEYS: [Key; 34] = [
    Key::HeaderDigest,
    Key::DataDigest,
    Key::MaxConnections,
    Key::SendTargets,
    Key::TargetName,
    Key::InitiatorName,
    Key::TargetAlias,
    Key::InitiatorAlias,
    Key::TargetAddress,
    Key::TargetPortalGroupTag,
    Key::InitialR2T,
    Key::ImmediateData,
    Key::MaxRecvDataSegmentLength,
    Key::MaxBurstLength,
    Key::FirstBurstLength,
    Key::DefaultTime2Wait,
    Key::DefaultTime2Retain,
    Key::MaxOutstandingR2T,
    Key::DataPDUInOrder,
    Key::DataSequenceInOrder,
    Key::ErrorRecoveryLevel,
    Key::SessionType,
    Key::AuthMethod,
    Key::TaskReporting,
    Key::IscsiProtocolLevel,
    Key::OFMarker,
    Key::IFMarker,
    Key::OFMarkInt,
    Key::IFMarkInt,
    Key::ChapA,
    Key::ChapI,
    Key::ChapC,
    Key::ChapN,
    Key::ChapR,
];

impl Key {
    /// Every key, in table order.
    pub fn all() -> &'static [Key] {
        &ALL_KEYS
    }

    /// The key's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Key::HeaderDigest => "HeaderDigest",
            Key::DataDigest => "DataDigest",
            Key::MaxConnections => "MaxConnections",
            Key::SendTargets => "SendTargets",
            Key::TargetName => "TargetName",
            Key::InitiatorName => "InitiatorName",
            Key::TargetAlias => "TargetAlias",
            Key::InitiatorAlias => "InitiatorAlias",
            Key::TargetAddress => "TargetAddress",
            Key::TargetPortalGroupTag => "TargetPortalGroupTag",
            Key::InitialR2T => "InitialR2T",
            Key::ImmediateData => "ImmediateData",
            Key::MaxRecvDataSegmentLength => "MaxRecvDataSegmentLength",
            Key::MaxBurstLength => "MaxBurstLength",
            Key::FirstBurstLength => "FirstBurstLength",
            Key::DefaultTime2Wait => "DefaultTime2Wait",
            Key::DefaultTime2Retain => "DefaultTime2Retain",
            Key::MaxOutstandingR2T => "MaxOutstandingR2T",
            Key::DataPDUInOrder => "DataPDUInOrder",
            Key::DataSequenceInOrder => "DataSequenceInOrder",
            Key::ErrorRecoveryLevel => "ErrorRecoveryLevel",
            Key::SessionType => "SessionType",
            Key::AuthMethod => "AuthMethod",
            Key::TaskReporting => "TaskReporting",
            Key::IscsiProtocolLevel => "iSCSIProtocolLevel",
            Key::OFMarker => "OFMarker",
            Key::IFMarker => "IFMarker",
            Key::OFMarkInt => "OFMarkInt",
            Key::IFMarkInt => "IFMarkInt",
            Key::ChapA => "CHAP_A",
            Key::ChapI => "CHAP_I",
            Key::ChapC => "CHAP_C",
            Key::ChapN => "CHAP_N",
            Key::ChapR => "CHAP_R",
        }
    }

    /// The key of a wire name (key names are case-sensitive, RFC 7143 §6.1).
    pub fn from_name(name: &str) -> Option<Key> {
        ALL_KEYS.iter().copied().find(|k| k.name() == name)
    }

    /// The key's row of the RFC 7143 §13 table.
    pub fn def(self) -> KeyDef {
        use Rule::*;
        use Senders::*;
        use Usage::*;
        let def = |rule, usage, senders, irrelevant_in_discovery| KeyDef {
            rule,
            usage,
            senders,
            irrelevant_in_discovery,
        };
        let text = Declare { range: None };
        match self {
            Key::HeaderDigest | Key::DataDigest => def(List, LoginOnly, Both, false),
            Key::MaxConnections => def(Min { lo: 1, hi: 65_535 }, LeadingOnly, Both, true),
            Key::SendTargets => def(text, FullFeatureOnly, Initiator, false),
            Key::TargetName => def(text, LoginOnly, Initiator, false),
            Key::InitiatorName => def(text, LoginOnly, Initiator, false),
            Key::TargetAlias => def(text, All, Target, false),
            Key::InitiatorAlias => def(text, All, Initiator, false),
            Key::TargetAddress => def(text, All, Target, false),
            Key::TargetPortalGroupTag => def(
                Declare {
                    range: Some((0, 65_535)),
                },
                LoginOnly,
                Target,
                false,
            ),
            Key::InitialR2T => def(Or, LeadingOnly, Both, true),
            Key::ImmediateData => def(And, LeadingOnly, Both, true),
            Key::MaxRecvDataSegmentLength => def(
                Declare {
                    range: Some((512, MAX_24)),
                },
                All,
                Both,
                false,
            ),
            Key::MaxBurstLength | Key::FirstBurstLength => def(
                Min {
                    lo: 512,
                    hi: MAX_24,
                },
                LeadingOnly,
                Both,
                true,
            ),
            Key::DefaultTime2Wait => def(Max { lo: 0, hi: 3600 }, LeadingOnly, Both, false),
            Key::DefaultTime2Retain => def(Min { lo: 0, hi: 3600 }, LeadingOnly, Both, false),
            Key::MaxOutstandingR2T => def(Min { lo: 1, hi: 65_535 }, LeadingOnly, Both, true),
            Key::DataPDUInOrder | Key::DataSequenceInOrder => def(Or, LeadingOnly, Both, true),
            Key::ErrorRecoveryLevel => def(Min { lo: 0, hi: 2 }, LeadingOnly, Both, false),
            Key::SessionType => def(text, LeadingOnly, Initiator, false),
            Key::AuthMethod => def(Security, LoginOnly, Both, false),
            Key::TaskReporting => def(List, LeadingOnly, Both, true),
            Key::IscsiProtocolLevel => def(Min { lo: 0, hi: 31 }, LeadingOnly, Both, true),
            Key::OFMarker | Key::IFMarker => def(Obsolete { answer: "No" }, LoginOnly, Both, false),
            Key::OFMarkInt | Key::IFMarkInt => {
                def(Obsolete { answer: "Reject" }, LoginOnly, Both, false)
            }
            Key::ChapA | Key::ChapI | Key::ChapC | Key::ChapN | Key::ChapR => {
                def(Security, LoginOnly, Both, false)
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a negotiation failed. Every variant fails the login: the target answers with
/// [`NegotiationError::status`], the initiator closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("{key} appears twice in one text (RFC 7143 §6.2)")]
    Duplicate { key: String },
    #[error("{key}={value} negotiates again a key already settled in this login (RFC 7143 §6.2)")]
    Renegotiated { key: String, value: String },
    #[error("{key}={value}: a reserved constant cannot be offered (RFC 7143 §6.2)")]
    ReservedOffer { key: String, value: String },
    #[error("the {sender} sent {key}, which RFC 7143 §13 does not let it send")]
    WrongSender { key: Key, sender: Role },
    #[error("{peer} answered {key}={answer} to an offer of {offer}: {why}")]
    IllegalAnswer {
        peer: Role,
        key: Key,
        offer: String,
        answer: String,
        why: &'static str,
    },
    #[error("{peer} declared {key}={value}: {why}")]
    InvalidDeclaration {
        peer: Role,
        key: Key,
        value: String,
        why: &'static str,
    },
    #[error("{key} settled at {value}, which this {role} does not accept: {why}")]
    Unacceptable {
        role: Role,
        key: Key,
        value: String,
        why: &'static str,
    },
}

impl NegotiationError {
    /// The Login Response status a target sends for this failure: every one is the
    /// initiator breaking RFC 7143 §6 or offering what the target cannot accept.
    pub fn status(&self) -> LoginStatus {
        LoginStatus::INITIATOR_ERROR
    }
}

/// The result of reading one complete text from the peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Our answers to the keys the peer offered, to send in our next PDU.
    pub answers: TextParams,
    /// `AuthMethod` and `CHAP_*` keys, in the order received, for the security stage.
    pub security: TextParams,
}

/// Per-key progress of a negotiated (non-declarative) key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyState {
    Open,
    /// We offered this value and wait for the answer.
    Offered(String),
    /// Settled (offered and answered, in either direction).
    Done,
}

/// The negotiation of one login (one connection), for either role.
#[derive(Clone, Debug)]
pub struct Negotiation {
    role: Role,
    proposal: Proposal,
    session_type: SessionType,
    /// A connection that starts a session (TSIH 0): session-wide keys are negotiated here.
    leading: bool,
    session: SessionParams,
    connection: ConnectionParams,
    states: Vec<KeyState>,
    /// Declarative keys the peer has sent, so a second declaration is caught.
    peer_declared: Vec<bool>,
    we_declared_max_recv: bool,
    /// Private (X-/X#) or unknown keys we offered: their answers are accepted as they come.
    offered_private: Vec<String>,
    /// `TargetAddress` the target sent (redirection), if any.
    target_address: Option<String>,
    iscsi_protocol_level: u64,
}

impl Negotiation {
    /// A negotiation for one login. `leading` is true for a connection that creates (or
    /// reinstates) a session, i.e. a Login Request with TSIH 0.
    pub fn new(role: Role, proposal: Proposal, session_type: SessionType, leading: bool) -> Self {
        Negotiation {
            role,
            proposal,
            session_type,
            leading,
            session: SessionParams {
                session_type,
                ..SessionParams::default()
            },
            connection: ConnectionParams::default(),
            states: vec![KeyState::Open; ALL_KEYS.len()],
            peer_declared: vec![false; ALL_KEYS.len()],
            we_declared_max_recv: false,
            offered_private: Vec::new(),
            target_address: None,
            iscsi_protocol_level: ISCSI_PROTOCOL_LEVEL,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn session_type(&self) -> SessionType {
        self.session_type
    }

    /// The session parameters as negotiated so far (identity keys included).
    pub fn session(&self) -> &SessionParams {
        &self.session
    }

    /// The connection parameters as negotiated so far.
    pub fn connection(&self) -> &ConnectionParams {
        &self.connection
    }

    /// `TargetAddress` the target declared (a redirection), if any.
    pub fn target_address(&self) -> Option<&str> {
        self.target_address.as_deref()
    }

    /// The negotiated iSCSIProtocolLevel (1 unless the peer offered less).
    pub fn iscsi_protocol_level(&self) -> u64 {
        self.iscsi_protocol_level
    }

    /// Record identity values this side declares itself (the initiator's own names, the
    /// target's alias and portal group tag): they are part of the resulting session.
    pub(crate) fn session_mut(&mut self) -> &mut SessionParams {
        &mut self.session
    }

    /// Whether any offer of ours still waits for an answer the peer owes us. Boolean offers
    /// whose result is already decided (`OR` with Yes, `AND` with No) need no answer.
    pub fn awaiting_answers(&self) -> bool {
        ALL_KEYS.iter().any(|k| match &self.states[*k as usize] {
            KeyState::Offered(v) => !answer_optional(*k, v),
            _ => false,
        })
    }

    /// Our operational offers (the originator side): every key of the proposal that applies
    /// to this session and connection and is not settled yet, plus our
    /// `MaxRecvDataSegmentLength` declaration. `private` keys (X-/X# extensions) are
    /// appended as given.
    pub fn operational_offers(&mut self, private: &TextParams) -> TextParams {
        let p = self.proposal.clone();
        let mut out = TextParams::new();
        let digests = |l: &[Digest]| l.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",");
        let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
        let mut offers: Vec<(Key, String)> = vec![
            (Key::HeaderDigest, digests(&p.header_digest)),
            (Key::DataDigest, digests(&p.data_digest)),
        ];
        if self.leading && self.session_type == SessionType::Normal {
            offers.extend([
                (Key::InitialR2T, yes_no(p.initial_r2t)),
                (Key::ImmediateData, yes_no(p.immediate_data)),
                (Key::MaxBurstLength, p.max_burst_length.to_string()),
                (Key::FirstBurstLength, p.first_burst_length.to_string()),
                (Key::DefaultTime2Wait, p.default_time2wait.to_string()),
                (Key::DefaultTime2Retain, p.default_time2retain.to_string()),
                (Key::MaxOutstandingR2T, p.max_outstanding_r2t.to_string()),
                (Key::MaxConnections, p.max_connections.to_string()),
                (Key::DataPDUInOrder, yes_no(p.data_pdu_in_order)),
                (Key::DataSequenceInOrder, yes_no(p.data_sequence_in_order)),
                (Key::ErrorRecoveryLevel, p.error_recovery_level.to_string()),
            ]);
        } else if self.leading {
            // A discovery session negotiates only what its Text exchanges use.
            offers.extend([
                (Key::DefaultTime2Wait, p.default_time2wait.to_string()),
                (Key::DefaultTime2Retain, p.default_time2retain.to_string()),
                (Key::ErrorRecoveryLevel, p.error_recovery_level.to_string()),
            ]);
        }
        for (key, value) in offers {
            if self.states[key as usize] == KeyState::Open && !value.is_empty() {
                self.states[key as usize] = KeyState::Offered(value.clone());
                out.push(key.name(), value);
            }
        }
        out.extend(self.declarations());
        for (k, v) in private.iter() {
            self.offered_private.push(k.to_string());
            out.push(k, v);
        }
        out
    }

    /// Our declarations not yet sent (`MaxRecvDataSegmentLength`). Once sent, the declared
    /// value is our receive limit after the login.
    pub fn declarations(&mut self) -> TextParams {
        let mut out = TextParams::new();
        if !self.we_declared_max_recv {
            self.we_declared_max_recv = true;
            self.connection.max_recv_data_segment_length =
                self.proposal.max_recv_data_segment_length;
            out.push(
                Key::MaxRecvDataSegmentLength.name(),
                self.proposal.max_recv_data_segment_length.to_string(),
            );
        }
        out
    }

    /// Read one complete text from the peer: answer its offers, apply its answers to ours,
    /// and hand back the security keys.
    pub fn receive(&mut self, text: &TextParams) -> Result<Received, NegotiationError> {
        let mut seen: Vec<&str> = Vec::with_capacity(text.len());
        for (k, _) in text.iter() {
            if seen.contains(&k) {
                return Err(NegotiationError::Duplicate { key: k.to_string() });
            }
            seen.push(k);
        }

        // FirstBurstLength's answer depends on InitialR2T, ImmediateData and MaxBurstLength,
        // which may come later in the same text: it is settled after everything else.
        let mut answers: Vec<(usize, String, String)> = Vec::new();
        let mut security = TextParams::new();
        let mut deferred = None;
        for (index, (k, v)) in text.iter().enumerate() {
            match Key::from_name(k) {
                Some(Key::FirstBurstLength) => deferred = Some((index, v)),
                Some(key) if key.def().rule == Rule::Security => security.push(k, v),
                Some(key) => {
                    if let Some(a) = self.receive_key(key, v)? {
                        answers.push((index, key.name().to_string(), a));
                    }
                }
                None => {
                    if let Some(a) = self.receive_unknown(k, v) {
                        answers.push((index, k.to_string(), a));
                    }
                }
            }
        }
        if let Some((index, v)) = deferred {
            if let Some(a) = self.receive_key(Key::FirstBurstLength, v)? {
                answers.push((index, Key::FirstBurstLength.name().to_string(), a));
            }
        }
        answers.sort_by_key(|(i, _, _)| *i);
        Ok(Received {
            answers: answers.into_iter().map(|(_, k, v)| (k, v)).collect(),
            security,
        })
    }

    /// The parameters in force after the login, once the integrity rules hold and every
    /// result is acceptable to this side.
    pub fn finish(&self) -> Result<(SessionParams, ConnectionParams), NegotiationError> {
        let mut session = self.session.clone();
        let connection = self.connection.clone();
        // Offers whose answer was optional and never came: the offered value is the result.
        for key in ALL_KEYS {
            if let KeyState::Offered(v) = &self.states[key as usize] {
                if answer_optional(key, v) {
                    match key {
                        Key::InitialR2T => session.initial_r2t = true,
                        Key::DataPDUInOrder => session.data_pdu_in_order = true,
                        Key::DataSequenceInOrder => session.data_sequence_in_order = true,
                        Key::ImmediateData => session.immediate_data = false,
                        _ => {}
                    }
                }
            }
        }
        // RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength. Both sides apply
        // the same clamp, so they agree even when the two keys were settled in any order.
        session.first_burst_length = session.first_burst_length.min(session.max_burst_length);

        let digest_ok = |d: bool, list: &[Digest]| {
            list.contains(&if d { Digest::Crc32c } else { Digest::None })
        };
        for (key, on, list) in [
            (
                Key::HeaderDigest,
                connection.header_digest,
                &self.proposal.header_digest,
            ),
            (
                Key::DataDigest,
                connection.data_digest,
                &self.proposal.data_digest,
            ),
        ] {
            if !digest_ok(on, list) {
                return Err(NegotiationError::Unacceptable {
                    role: self.role,
                    key,
                    value: if on { "CRC32C" } else { "None" }.to_string(),
                    why: "not in this side's digest list",
                });
            }
        }
        Ok((session, connection))
    }

    /// One known, non-security key from the peer. `Ok(Some(answer))` when we must answer.
    fn receive_key(&mut self, key: Key, value: &str) -> Result<Option<String>, NegotiationError> {
        let def = key.def();
        let peer = self.role.peer();
        if def.usage == Usage::FullFeatureOnly {
            // SendTargets belongs to Text Requests in full feature phase, never to a login.
            return Ok(Some("Reject".to_string()));
        }
        if let Rule::Declare { .. } = def.rule {
            return self.receive_declaration(key, def, value).map(|()| None);
        }
        match self.states[key as usize].clone() {
            KeyState::Done => Err(NegotiationError::Renegotiated {
                key: key.name().to_string(),
                value: value.to_string(),
            }),
            KeyState::Offered(offer) => {
                self.apply_answer(key, def, &offer, value)?;
                self.states[key as usize] = KeyState::Done;
                Ok(None)
            }
            KeyState::Open => {
                if !def.senders.allows(peer) {
                    return Err(NegotiationError::WrongSender { key, sender: peer });
                }
                if is_reserved_answer(value) {
                    return Err(NegotiationError::ReservedOffer {
                        key: key.name().to_string(),
                        value: value.to_string(),
                    });
                }
                self.states[key as usize] = KeyState::Done;
                let answer = self.answer(key, def, value);
                // An initiator leaves out answers whose result the offer already decides (RFC
                // 7143 §6.2.2), so such an offer in a target's final Login Response (tgtd
                // sends IFMarker=No unasked) needs no further request. A target answers
                // everything, as tgtd and LIO do.
                let decided = answer_optional(key, value)
                    || (matches!(def.rule, Rule::Obsolete { .. }) && value == "No");
                if self.role == Role::Initiator && decided {
                    return Ok(None);
                }
                Ok(Some(answer))
            }
        }
    }

    /// A key the peer offers (we respond): the answer, applying the result.
    fn answer(&mut self, key: Key, def: KeyDef, offer: &str) -> String {
        const IRRELEVANT: &str = "Irrelevant";
        const REJECT: &str = "Reject";
        if let Rule::Obsolete { answer } = def.rule {
            return answer.to_string();
        }
        if self.session_type == SessionType::Discovery && def.irrelevant_in_discovery {
            return IRRELEVANT.to_string();
        }
        if !self.leading && def.usage == Usage::LeadingOnly {
            // Session-wide keys were settled by the leading connection; the caller keeps
            // the session's values for a connection added to it.
            return IRRELEVANT.to_string();
        }
        let p = &self.proposal;
        match def.rule {
            Rule::List => {
                let ours: &[Digest] = match key {
                    Key::HeaderDigest => &p.header_digest,
                    Key::DataDigest => &p.data_digest,
                    _ => &[],
                };
                if key == Key::TaskReporting {
                    // Only the RFC 3720 task reporting semantics are implemented.
                    return if offer.split(',').any(|v| v == "RFC3720") {
                        "RFC3720".to_string()
                    } else {
                        REJECT.to_string()
                    };
                }
                let pick = offer
                    .split(',')
                    .filter_map(Digest::parse)
                    .find(|d| ours.contains(d));
                match pick {
                    Some(d) => {
                        self.set_digest(key, d);
                        d.as_str().to_string()
                    }
                    None => REJECT.to_string(),
                }
            }
            Rule::Min { lo, hi } | Rule::Max { lo, hi } => {
                let Some(n) = parse_numeric(offer).filter(|n| (lo..=hi).contains(n)) else {
                    return REJECT.to_string();
                };
                if key == Key::FirstBurstLength
                    && self.session.initial_r2t
                    && !self.session.immediate_data
                {
                    // RFC 7143 §13.14: no unsolicited data at all, so no first burst.
                    return IRRELEVANT.to_string();
                }
                let ours = match key {
                    Key::FirstBurstLength => {
                        (p.first_burst_length as u64).min(self.session.max_burst_length as u64)
                    }
                    _ => self.our_numeric(key),
                };
                let result = match def.rule {
                    Rule::Max { .. } => n.max(ours),
                    _ => n.min(ours),
                };
                self.set_numeric(key, result);
                result.to_string()
            }
            Rule::Or | Rule::And => {
                let Some(b) = parse_bool(offer) else {
                    return REJECT.to_string();
                };
                let ours = self.our_bool(key);
                let result = if def.rule == Rule::Or {
                    b || ours
                } else {
                    b && ours
                };
                self.set_bool(key, result);
                yes_no(result).to_string()
            }
            Rule::Declare { .. } | Rule::Obsolete { .. } | Rule::Security => REJECT.to_string(),
        }
    }

    /// The peer's answer to our offer of `key`: checked against the result function.
    fn apply_answer(
        &mut self,
        key: Key,
        def: KeyDef,
        offer: &str,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        let illegal = |why| NegotiationError::IllegalAnswer {
            peer: self.role.peer(),
            key,
            offer: offer.to_string(),
            answer: answer.to_string(),
            why,
        };
        // "Reject" and "Irrelevant" leave the key at its current value (RFC 7143 §6.2);
        // "NotUnderstood" is not a legal answer for an RFC key, and is treated the same way
        // rather than failing a login over a key the result check below still guards.
        if is_reserved_answer(answer) {
            return Ok(());
        }
        match def.rule {
            Rule::List => {
                if !offer.split(',').any(|v| v == answer) {
                    return Err(illegal("not one of the offered values"));
                }
                if let Some(d) = Digest::parse(answer) {
                    self.set_digest(key, d);
                }
                Ok(())
            }
            Rule::Min { lo, hi } | Rule::Max { lo, hi } => {
                let n = parse_numeric(answer).ok_or_else(|| illegal("not a number"))?;
                if !(lo..=hi).contains(&n) {
                    return Err(illegal("outside the key's range"));
                }
                let offered = parse_numeric(offer).unwrap_or(n);
                match def.rule {
                    Rule::Min { .. } if n > offered => {
                        return Err(illegal(
                            "larger than offered, but the result is the minimum",
                        ))
                    }
                    Rule::Max { .. } if n < offered => {
                        return Err(illegal(
                            "smaller than offered, but the result is the maximum",
                        ))
                    }
                    _ => {}
                }
                self.set_numeric(key, n);
                Ok(())
            }
            Rule::Or | Rule::And => {
                let b = parse_bool(answer).ok_or_else(|| illegal("neither Yes nor No"))?;
                let offered = parse_bool(offer).unwrap_or(b);
                if def.rule == Rule::Or && offered && !b {
                    return Err(illegal("the result of OR with Yes is Yes"));
                }
                if def.rule == Rule::And && !offered && b {
                    return Err(illegal("the result of AND with No is No"));
                }
                self.set_bool(key, b);
                Ok(())
            }
            Rule::Declare { .. } | Rule::Obsolete { .. } | Rule::Security => Ok(()),
        }
    }

    fn receive_declaration(
        &mut self,
        key: Key,
        def: KeyDef,
        value: &str,
    ) -> Result<(), NegotiationError> {
        let peer = self.role.peer();
        if !def.senders.allows(peer) {
            return Err(NegotiationError::WrongSender { key, sender: peer });
        }
        let invalid = |why| NegotiationError::InvalidDeclaration {
            peer,
            key,
            value: value.chars().take(80).collect(),
            why,
        };
        if is_reserved_answer(value) {
            return Err(NegotiationError::ReservedOffer {
                key: key.name().to_string(),
                value: value.to_string(),
            });
        }
        if self.peer_declared[key as usize] {
            // libiscsi repeats its identity when it enters the operational stage; the same
            // value again changes nothing, a different one would.
            let same = match key {
                Key::InitiatorName => self.session.initiator_name == value,
                Key::TargetName => self.session.target_name == value,
                Key::InitiatorAlias => self.session.initiator_alias.as_deref() == Some(value),
                Key::SessionType => parse_session_type(value) == Some(self.session_type),
                _ => false,
            };
            if same {
                return Ok(());
            }
            return Err(NegotiationError::Renegotiated {
                key: key.name().to_string(),
                value: value.to_string(),
            });
        }
        if value.len() > MAX_TEXT_VALUE_LEN {
            return Err(invalid("longer than 255 bytes"));
        }
        let number = |range: Option<(u64, u64)>| -> Result<u64, NegotiationError> {
            let (lo, hi) = range.unwrap_or((0, u64::MAX));
            match parse_numeric(value) {
                Some(n) if (lo..=hi).contains(&n) => Ok(n),
                Some(_) => Err(invalid("outside the key's range")),
                None => Err(invalid("not a number")),
            }
        };
        let range = match def.rule {
            Rule::Declare { range } => range,
            _ => None,
        };
        match key {
            Key::MaxRecvDataSegmentLength => {
                self.connection.max_send_data_segment_length = number(range)? as u32;
            }
            Key::TargetPortalGroupTag => {
                self.session.target_portal_group_tag = number(range)? as u16;
            }
            Key::InitiatorName | Key::TargetName if value.is_empty() => {
                return Err(invalid("an iSCSI name cannot be empty"));
            }
            Key::InitiatorName => self.session.initiator_name = value.to_string(),
            Key::TargetName => self.session.target_name = value.to_string(),
            Key::InitiatorAlias => self.session.initiator_alias = Some(value.to_string()),
            Key::TargetAlias => self.session.target_alias = Some(value.to_string()),
            Key::TargetAddress => self.target_address = Some(value.to_string()),
            Key::SessionType => match parse_session_type(value) {
                Some(t) if t == self.session_type => {}
                Some(_) => return Err(invalid("differs from the session type of this login")),
                None => return Err(invalid("neither Normal nor Discovery")),
            },
            // SendTargets is declarative but full-feature-only: a login never carries it.
            _ => return Err(invalid("not allowed during login")),
        }
        self.peer_declared[key as usize] = true;
        Ok(())
    }

    /// A key outside the RFC table. Private (X-/X#) and unknown keys are answered
    /// NotUnderstood, unless it is the answer to a private key we offered.
    fn receive_unknown(&mut self, key: &str, value: &str) -> Option<String> {
        if let Some(pos) = self.offered_private.iter().position(|k| k == key) {
            self.offered_private.swap_remove(pos);
            return None;
        }
        if is_reserved_answer(value) {
            // An answer to something we never offered: nothing to answer back.
            return None;
        }
        Some("NotUnderstood".to_string())
    }

    fn our_numeric(&self, key: Key) -> u64 {
        let p = &self.proposal;
        match key {
            Key::MaxConnections => p.max_connections as u64,
            Key::MaxBurstLength => p.max_burst_length as u64,
            Key::FirstBurstLength => p.first_burst_length as u64,
            Key::DefaultTime2Wait => p.default_time2wait as u64,
            Key::DefaultTime2Retain => p.default_time2retain as u64,
            Key::MaxOutstandingR2T => p.max_outstanding_r2t as u64,
            Key::ErrorRecoveryLevel => p.error_recovery_level as u64,
            Key::IscsiProtocolLevel => ISCSI_PROTOCOL_LEVEL,
            _ => 0,
        }
    }

    fn set_numeric(&mut self, key: Key, n: u64) {
        // Callers checked `n` against the key's range, so the narrowing casts are exact.
        let s = &mut self.session;
        match key {
            Key::MaxConnections => s.max_connections = n as u16,
            Key::MaxBurstLength => s.max_burst_length = n as u32,
            Key::FirstBurstLength => s.first_burst_length = n as u32,
            Key::DefaultTime2Wait => s.default_time2wait = n as u16,
            Key::DefaultTime2Retain => s.default_time2retain = n as u16,
            Key::MaxOutstandingR2T => s.max_outstanding_r2t = n as u16,
            Key::ErrorRecoveryLevel => s.error_recovery_level = n as u8,
            Key::IscsiProtocolLevel => self.iscsi_protocol_level = n,
            _ => {}
        }
    }

    fn our_bool(&self, key: Key) -> bool {
        let p = &self.proposal;
        match key {
            Key::InitialR2T => p.initial_r2t,
            Key::ImmediateData => p.immediate_data,
            Key::DataPDUInOrder => p.data_pdu_in_order,
            Key::DataSequenceInOrder => p.data_sequence_in_order,
            _ => false,
        }
    }

    fn set_bool(&mut self, key: Key, b: bool) {
        let s = &mut self.session;
        match key {
            Key::InitialR2T => s.initial_r2t = b,
            Key::ImmediateData => s.immediate_data = b,
            Key::DataPDUInOrder => s.data_pdu_in_order = b,
            Key::DataSequenceInOrder => s.data_sequence_in_order = b,
            _ => {}
        }
    }

    fn set_digest(&mut self, key: Key, d: Digest) {
        let on = d == Digest::Crc32c;
        match key {
            Key::HeaderDigest => self.connection.header_digest = on,
            Key::DataDigest => self.connection.data_digest = on,
            _ => {}
        }
    }
}

/// Whether an offer's result is decided by the offer alone, so the responder need not
/// answer (RFC 7143 §6.2.2: OR with Yes, AND with No).
fn answer_optional(key: Key, offer: &str) -> bool {
    match key.def().rule {
        Rule::Or => offer == "Yes",
        Rule::And => offer == "No",
        _ => false,
    }
}

/// The constants that may only appear as answers (RFC 7143 §6.2).
fn is_reserved_answer(v: &str) -> bool {
    matches!(v, "Reject" | "Irrelevant" | "NotUnderstood")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub(crate) fn parse_session_type(v: &str) -> Option<SessionType> {
    match v {
        "Normal" => Some(SessionType::Normal),
        "Discovery" => Some(SessionType::Discovery),
        _ => None,
    }
}

/// An RFC 7143 §6.1 numerical value: decimal, or `0x` hex (at most 64 bits).
pub fn parse_numeric(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(pairs: &[(&str, &str)]) -> TextParams {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn target() -> Negotiation {
        Negotiation::new(Role::Target, Proposal::target(), SessionType::Normal, true)
    }

    fn answer_of(n: &mut Negotiation, key: &str, offer: &str) -> String {
        let r = n.receive(&text(&[(key, offer)])).unwrap();
        r.answers.get(key).unwrap_or("<none>").to_string()
    }

    #[test]
    fn every_key_round_trips_its_name() {
        for k in Key::all() {
            assert_eq!(Key::from_name(k.name()), Some(*k));
        }
        assert_eq!(Key::from_name("maxburstlength"), None);
    }

    #[test]
    fn responder_numeric_and_boolean_rules() {
        // (key, offer, target's answer) with the target proposal's values:
        // MaxBurstLength 1048576, FirstBurstLength 262144, MaxOutstandingR2T 16,
        // MaxConnections 1, DefaultTime2Wait 2, DefaultTime2Retain 20, ERL 0,
        // InitialR2T No, ImmediateData Yes, DataPDUInOrder Yes, DataSequenceInOrder Yes.
        let cases = [
            ("MaxBurstLength", "262144", "262144"),
            ("MaxBurstLength", "16777215", "1048576"),
            ("MaxBurstLength", "0x1000", "4096"),
            ("MaxBurstLength", "511", "Reject"),
            ("MaxBurstLength", "16777216", "Reject"),
            ("MaxBurstLength", "lots", "Reject"),
            ("MaxOutstandingR2T", "1", "1"),
            ("MaxOutstandingR2T", "64", "16"),
            ("MaxOutstandingR2T", "0", "Reject"),
            ("MaxConnections", "8", "1"),
            ("DefaultTime2Wait", "0", "2"),
            ("DefaultTime2Wait", "10", "10"),
            ("DefaultTime2Wait", "3601", "Reject"),
            ("DefaultTime2Retain", "0", "0"),
            ("DefaultTime2Retain", "60", "20"),
            ("ErrorRecoveryLevel", "2", "0"),
            ("ErrorRecoveryLevel", "3", "Reject"),
            ("iSCSIProtocolLevel", "2", "1"),
            ("iSCSIProtocolLevel", "0", "0"),
            ("InitialR2T", "Yes", "Yes"),
            ("InitialR2T", "No", "No"),
            ("InitialR2T", "yes", "Reject"),
            ("ImmediateData", "No", "No"),
            ("ImmediateData", "Yes", "Yes"),
            ("DataPDUInOrder", "No", "Yes"),
            ("DataSequenceInOrder", "Yes", "Yes"),
            ("HeaderDigest", "None,CRC32C", "None"),
            ("HeaderDigest", "CRC32C,None", "CRC32C"),
            ("DataDigest", "MD5,CRC32C", "CRC32C"),
            ("DataDigest", "MD5", "Reject"),
            ("TaskReporting", "ResponseFence,RFC3720", "RFC3720"),
            ("TaskReporting", "FastAbort", "Reject"),
            ("IFMarker", "Yes", "No"),
            ("OFMarker", "No", "No"),
            ("OFMarkInt", "2048", "Reject"),
            ("IFMarkInt", "1~65535", "Reject"),
            ("SendTargets", "All", "Reject"),
            ("X-com.example.thing", "1", "NotUnderstood"),
            ("X#org.example", "1", "NotUnderstood"),
            ("SomethingNew", "1", "NotUnderstood"),
        ];
        for (key, offer, want) in cases {
            let mut n = target();
            assert_eq!(answer_of(&mut n, key, offer), want, "{key}={offer}");
        }
    }

    #[test]
    fn results_land_in_params() {
        let mut n = target();
        let r = n
            .receive(&text(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "524288"),
                ("FirstBurstLength", "65536"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("MaxOutstandingR2T", "4"),
            ]))
            .unwrap();
        assert_eq!(
            r.answers.get("MaxRecvDataSegmentLength"),
            None,
            "declarative"
        );
        let (s, c) = n.finish().unwrap();
        assert!(c.header_digest && !c.data_digest);
        assert_eq!(c.max_send_data_segment_length, 65536);
        assert!(s.initial_r2t && s.immediate_data);
        assert_eq!((s.max_burst_length, s.first_burst_length), (524288, 65536));
        assert_eq!(s.max_outstanding_r2t, 4);
    }

    #[test]
    fn first_burst_is_clamped_to_max_burst() {
        // Same text: the answer already respects the MaxBurstLength result.
        let mut n = target();
        let r = n
            .receive(&text(&[
                ("FirstBurstLength", "262144"),
                ("MaxBurstLength", "65536"),
            ]))
            .unwrap();
        assert_eq!(r.answers.get("FirstBurstLength"), Some("65536"));
        // Settled in separate texts: finish applies the integrity rule.
        let mut n = target();
        n.receive(&text(&[("FirstBurstLength", "262144")])).unwrap();
        n.receive(&text(&[("MaxBurstLength", "8192")])).unwrap();
        let (s, _) = n.finish().unwrap();
        assert_eq!(s.first_burst_length, 8192);
    }

    #[test]
    fn first_burst_irrelevant_without_unsolicited_data() {
        let mut n = target();
        let r = n
            .receive(&text(&[
                ("FirstBurstLength", "65536"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
            ]))
            .unwrap();
        assert_eq!(r.answers.get("FirstBurstLength"), Some("Irrelevant"));
    }

    #[test]
    fn discovery_and_non_leading_irrelevance() {
        let mut n = Negotiation::new(
            Role::Target,
            Proposal::target(),
            SessionType::Discovery,
            true,
        );
        assert_eq!(answer_of(&mut n, "MaxBurstLength", "262144"), "Irrelevant");
        assert_eq!(answer_of(&mut n, "HeaderDigest", "None"), "None");
        assert_eq!(answer_of(&mut n, "DefaultTime2Wait", "2"), "2");
        let mut n = Negotiation::new(Role::Target, Proposal::target(), SessionType::Normal, false);
        assert_eq!(answer_of(&mut n, "MaxBurstLength", "262144"), "Irrelevant");
        assert_eq!(answer_of(&mut n, "DataDigest", "CRC32C"), "CRC32C");
    }

    #[test]
    fn duplicates_and_renegotiation_fail() {
        let mut n = target();
        let e = n
            .receive(&text(&[
                ("MaxBurstLength", "512"),
                ("MaxBurstLength", "1024"),
            ]))
            .unwrap_err();
        assert!(matches!(e, NegotiationError::Duplicate { .. }));
        assert_eq!(e.status(), LoginStatus::INITIATOR_ERROR);
        let mut n = target();
        n.receive(&text(&[("MaxBurstLength", "512")])).unwrap();
        let e = n.receive(&text(&[("MaxBurstLength", "512")])).unwrap_err();
        assert!(matches!(e, NegotiationError::Renegotiated { .. }));
        // Identity declarations may be repeated unchanged (libiscsi does), not changed.
        let mut n = target();
        n.receive(&text(&[("InitiatorName", "iqn.a")])).unwrap();
        n.receive(&text(&[("InitiatorName", "iqn.a")])).unwrap();
        assert!(n.receive(&text(&[("InitiatorName", "iqn.b")])).is_err());
    }

    #[test]
    fn reserved_constants_are_not_offers() {
        let mut n = target();
        let e = n
            .receive(&text(&[("MaxBurstLength", "Reject")]))
            .unwrap_err();
        assert!(matches!(e, NegotiationError::ReservedOffer { .. }));
    }

    #[test]
    fn wrong_sender_fails() {
        let mut n = target();
        let e = n.receive(&text(&[("TargetAlias", "x")])).unwrap_err();
        assert_eq!(
            e,
            NegotiationError::WrongSender {
                key: Key::TargetAlias,
                sender: Role::Initiator
            }
        );
    }

    #[test]
    fn originator_checks_answers() {
        // (key, what the initiator proposal offers, target answer, accepted?)
        let cases = [
            ("MaxBurstLength", "1048576", true),
            ("MaxBurstLength", "2000000", false),
            ("MaxBurstLength", "511", false),
            ("MaxBurstLength", "Reject", true),
            ("DefaultTime2Wait", "1", false),
            ("DefaultTime2Wait", "5", true),
            ("InitialR2T", "Yes", true),
            ("InitialR2T", "Maybe", false),
            ("ImmediateData", "No", true),
            ("DataPDUInOrder", "No", false),
            ("HeaderDigest", "None", true),
            ("HeaderDigest", "CRC32C", false),
            ("ErrorRecoveryLevel", "1", false),
        ];
        for (key, answer, ok) in cases {
            let mut n = Negotiation::new(
                Role::Initiator,
                Proposal::initiator(),
                SessionType::Normal,
                true,
            );
            let offers = n.operational_offers(&TextParams::new());
            assert!(offers.get(key).is_some(), "{key} offered");
            let r = n.receive(&text(&[(key, answer)]));
            assert_eq!(r.is_ok(), ok, "{key}={answer}: {r:?}");
        }
        let mut n = Negotiation::new(
            Role::Initiator,
            Proposal::initiator(),
            SessionType::Normal,
            true,
        );
        n.operational_offers(&TextParams::new());
        let e = n
            .receive(&text(&[("MaxBurstLength", "2000000")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "target answered MaxBurstLength=2000000 to an offer of 1048576: larger than offered, \
             but the result is the minimum"
        );
    }

    #[test]
    fn originator_answers_responder_initiated_offers() {
        let mut n = Negotiation::new(
            Role::Initiator,
            Proposal::initiator(),
            SessionType::Normal,
            true,
        );
        // The target offers a key the initiator did not: the initiator answers it.
        let r = n.receive(&text(&[("MaxOutstandingR2T", "8")])).unwrap();
        assert_eq!(r.answers.get("MaxOutstandingR2T"), Some("1"));
        // ...and does not offer it again.
        let offers = n.operational_offers(&TextParams::new());
        assert_eq!(offers.get("MaxOutstandingR2T"), None);
    }

    #[test]
    fn required_digest_must_result() {
        let mut p = Proposal::target();
        p.header_digest = vec![Digest::Crc32c];
        let mut n = Negotiation::new(Role::Target, p, SessionType::Normal, true);
        assert_eq!(answer_of(&mut n, "HeaderDigest", "None"), "Reject");
        assert!(matches!(
            n.finish(),
            Err(NegotiationError::Unacceptable {
                key: Key::HeaderDigest,
                ..
            })
        ));
    }

    #[test]
    fn numeric_values() {
        assert_eq!(parse_numeric("0"), Some(0));
        assert_eq!(parse_numeric("0x10"), Some(16));
        assert_eq!(parse_numeric("18446744073709551616"), None);
        assert_eq!(parse_numeric("-1"), None);
        assert_eq!(parse_numeric(""), None);
        assert_eq!(parse_numeric("0x"), None);
        assert_eq!(parse_numeric(" 1"), None);
    }
}
