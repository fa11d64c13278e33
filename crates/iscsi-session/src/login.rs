//! The login phase (RFC 7143 §6.3, §11.12, §11.13) for both roles, sans-IO.
//!
//! [`TargetLogin`] answers Login Requests; [`InitiatorLogin`] sends them. Each is fed one
//! received PDU at a time and returns what to send and, at the end, the outcome. Neither
//! touches a socket, a clock or a random source: CHAP identifiers and challenges come from a
//! `random` callback the caller passes when the login starts.
//!
//! The stages: SecurityNegotiation (CSG 0: `AuthMethod`, CHAP) → LoginOperationalNegotiation
//! (CSG 1: the [`negotiate`](crate::negotiate) keys) → FullFeaturePhase (3). Either of the
//! first two may be skipped: an initiator without CHAP credentials starts in the operational
//! stage (one round trip less), and a request may ask to go from security straight to full
//! feature phase. A target whose policy requires CHAP never lets the initiator past the
//! security stage without it (AUTHENTICATION_FAILURE, 0x0201).
//!
//! Long texts: each login PDU carries at most 8192 bytes of data (MaxRecvDataSegmentLength
//! keeps its default for the whole login phase; declared values apply after it). Longer texts are split with the
//! C bit; the receiver acknowledges each piece (the target with an empty Login Response, the
//! initiator with an empty Login Request) and reassembles before decoding.
//!
//! Negotiated values take effect only after the login: the caller sends the final Login
//! Response (target) or receives it (initiator), and only then switches digests and
//! MaxRecvDataSegmentLength to the values in the outcome's [`ConnectionParams`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use iscsi_pdu::{
    Bhs, Cid, Isid, Itt, LoginRequest, LoginResponse, LoginStatus, Pdu, SerialNumber, Stage,
    TextParams, Tsih,
};

use crate::chap::{ChapCredentials, ChapInitiator, ChapTarget, CHAP_CHALLENGE_LEN};
use crate::negotiate::{parse_session_type, Negotiation, Proposal, Role};
use crate::params::{ConnectionParams, SessionParams, SessionType};

/// Largest data segment of a login PDU in either direction: MaxRecvDataSegmentLength keeps its
/// default of 8192 for the whole login phase (declared values take effect after it).
pub const LOGIN_MAX_DATA_SEGMENT_LENGTH: usize = 8192;

/// Most text one side may send in one continued (C bit) sequence. A complete operational key
/// set is about 600 bytes and the largest legal CHAP value 2050; 64 KiB leaves room for vendor
/// keys while bounding what a peer can make us buffer.
pub const MAX_LOGIN_TEXT: usize = 65_536;

/// Most PDUs a login may take before it is abandoned. A CHAP login with mutual
/// authentication needs 4 exchanges; a maximal continued text 8 more each way. 64 bounds a
/// peer that never finishes.
pub const MAX_LOGIN_PDUS: u32 = 64;

/// The only iSCSI version there is (RFC 7143 §11.12: Version-max/Version-min 0x00).
const ISCSI_VERSION: u8 = 0x00;

// ---- target -----------------------------------------------------------------------------

/// Who is logging in and to what: known after the first complete Login Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginIdentity {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: Isid,
    /// As requested: 0 for a new session (or the reinstatement of the session with this
    /// ISID), otherwise the session the connection joins.
    pub tsih: Tsih,
    pub cid: Cid,
    pub session_type: SessionType,
    /// `None` only for discovery sessions that name no target.
    pub target_name: Option<String>,
}

impl LoginIdentity {
    /// Whether this login starts (or reinstates) a session rather than adding a connection.
    pub fn is_leading(&self) -> bool {
        self.tsih == Tsih(0)
    }
}

/// How the target treats one initiator, decided by [`LoginDirectory::authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLoginPolicy {
    /// The initiator must authenticate with CHAP using these credentials; `None` accepts
    /// `AuthMethod=None`.
    pub chap: Option<ChapCredentials>,
    /// What the target answers with when the initiator asks for mutual CHAP. Must not share
    /// the secret of `chap` (RFC 7143 §12.1.3); a login with such a policy fails.
    pub mutual_chap: Option<ChapCredentials>,
    /// The target's operational limits.
    pub proposal: Proposal,
    /// Sent in the first Login Response (RFC 7143 §13.9).
    pub target_portal_group_tag: u16,
    pub target_alias: Option<String>,
}

impl TargetLoginPolicy {
    /// No authentication, mpath's target defaults.
    pub fn open(target_portal_group_tag: u16) -> Self {
        TargetLoginPolicy {
            chap: None,
            mutual_chap: None,
            proposal: Proposal::target(),
            target_portal_group_tag,
            target_alias: None,
        }
    }
}

/// Why the directory refuses a login: the status the Login Response carries and a reason for
/// the logs. Redirections (status class 0x01) carry the `TargetAddress` to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRefusal {
    pub status: LoginStatus,
    pub reason: String,
    pub target_address: Option<String>,
}

impl LoginRefusal {
    pub fn new(status: LoginStatus, reason: impl Into<String>) -> Self {
        LoginRefusal {
            status,
            reason: reason.into(),
            target_address: None,
        }
    }

    /// TARGET_MOVED_TEMPORARILY (0x0101) to `address` ("host:port,tpgt").
    pub fn moved_temporarily(address: impl Into<String>) -> Self {
        let address = address.into();
        LoginRefusal {
            status: LoginStatus::TARGET_MOVED_TEMPORARILY,
            reason: format!("redirected to {address}"),
            target_address: Some(address),
        }
    }
}

/// The target's view of its targets, sessions and access rules, consulted by [`TargetLogin`].
pub trait LoginDirectory {
    /// Called once, when InitiatorName, TargetName and SessionType are known (the first
    /// complete Login Request): does the target exist (else NOT_FOUND, 0x0203), may this
    /// initiator use it (else AUTHORIZATION_FAILURE, 0x0202), and with which policy.
    fn authorize(&self, identity: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal>;

    /// Called when the login is about to complete (the transition to full feature phase is
    /// accepted): reserve the session and return its TSIH — a new one for TSIH 0 (reinstating
    /// an existing session with the same initiator name and ISID), or the requested one when
    /// a connection joins a session (else SESSION_DOES_NOT_EXIST 0x020a,
    /// TOO_MANY_CONNECTIONS 0x0206, ...). For a joining connection `session` holds only the
    /// connection's negotiation: the session keeps the values of its leading login.
    fn admit(
        &self,
        identity: &LoginIdentity,
        session: &SessionParams,
    ) -> Result<Tsih, LoginRefusal>;
}

impl<T: LoginDirectory + ?Sized> LoginDirectory for &T {
    fn authorize(&self, identity: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        (**self).authorize(identity)
    }
    fn admit(
        &self,
        identity: &LoginIdentity,
        session: &SessionParams,
    ) -> Result<Tsih, LoginRefusal> {
        (**self).admit(identity, session)
    }
}

impl<T: LoginDirectory + ?Sized> LoginDirectory for Arc<T> {
    fn authorize(&self, identity: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        (**self).authorize(identity)
    }
    fn admit(
        &self,
        identity: &LoginIdentity,
        session: &SessionParams,
    ) -> Result<Tsih, LoginRefusal> {
        (**self).admit(identity, session)
    }
}

/// Sequence numbers the target login needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetLoginConfig {
    /// StatSN of the first Login Response: the connection's initial StatSN. Every Login
    /// Response after it carries the next number.
    pub initial_stat_sn: SerialNumber,
    /// How many commands the session accepts at once: responses advertise
    /// MaxCmdSN = ExpCmdSN + cmd_window - 1 (0 closes the window).
    pub cmd_window: u32,
}

impl Default for TargetLoginConfig {
    fn default() -> Self {
        TargetLoginConfig {
            initial_stat_sn: SerialNumber(0),
            // Enough queued commands to keep a target busy; the full feature connection
            // adjusts the window afterwards.
            cmd_window: 64,
        }
    }
}

/// What [`TargetLogin::handle`] returns: the Login Response to send (if any) and, once the
/// login is over, its outcome. The response must be sent even when the outcome is a failure:
/// it carries the status the initiator needs.
#[derive(Debug, Default)]
pub struct TargetLoginOutput {
    pub response: Option<Pdu>,
    pub outcome: Option<TargetLoginOutcome>,
}

/// How a target login ended.
#[derive(Debug)]
pub enum TargetLoginOutcome {
    /// Send the response, then switch to full feature phase with these parameters.
    Complete(Box<TargetLoginComplete>),
    /// Send the response (it carries `status`), then close the connection.
    Failed { status: LoginStatus, reason: String },
}

/// A successful target login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLoginComplete {
    pub identity: LoginIdentity,
    pub session: SessionParams,
    pub connection: ConnectionParams,
    /// The TSIH [`LoginDirectory::admit`] assigned, sent in the final Login Response.
    pub tsih: Tsih,
    /// StatSN of the final Login Response; the next response carries `stat_sn + 1`.
    pub stat_sn: SerialNumber,
    /// The CmdSN the first command will carry (login requests are immediate).
    pub exp_cmd_sn: SerialNumber,
    /// MaxCmdSN advertised in the final Login Response.
    pub max_cmd_sn: SerialNumber,
}

impl TargetLoginComplete {
    /// StatSN of the first response in full feature phase.
    pub fn next_stat_sn(&self) -> SerialNumber {
        self.stat_sn.next()
    }
}

/// The target side of one connection's login.
///
/// ```text
/// let mut login = TargetLogin::new(&directory, TargetLoginConfig::default(), &mut random);
/// for each received PDU:
///     let out = login.handle(pdu);
///     send(out.response);
///     match out.outcome { Some(Complete(c)) => start full feature phase, Some(Failed{..}) => close, None => {} }
/// ```
pub struct TargetLogin<D> {
    directory: D,
    config: TargetLoginConfig,
    chap_identifier: u8,
    chap_challenge: [u8; CHAP_CHALLENGE_LEN],
    pdus: u32,
    /// StatSN of the next Login Response.
    stat_sn: SerialNumber,
    /// CmdSN of the latest Login Request: ExpCmdSN of our responses.
    exp_cmd_sn: SerialNumber,
    /// ISID, TSIH and CID of the first request; every later request must repeat them.
    header: Option<(Isid, Tsih, Cid)>,
    /// The stage the next request must be in (its CSG).
    stage: Stage,
    /// Text of a request continued with the C bit, not complete yet.
    partial: Vec<u8>,
    /// Our response text still to send, when it needed several PDUs.
    outgoing: Option<Outgoing>,
    session: Option<Box<TargetSession>>,
    finished: bool,
}

/// Flags of a Login Response.
#[derive(Clone, Copy, Debug)]
struct ResponseFlags {
    transit: bool,
    csg: Stage,
    nsg: Stage,
    tsih: Tsih,
}

struct Outgoing {
    chunks: VecDeque<Bytes>,
    /// Flags of the last chunk; the others carry C=1, T=0.
    last: ResponseFlags,
    complete: Option<PendingComplete>,
}

struct PendingComplete {
    identity: LoginIdentity,
    session: SessionParams,
    connection: ConnectionParams,
    tsih: Tsih,
}

struct TargetSession {
    identity: LoginIdentity,
    policy: TargetLoginPolicy,
    negotiation: Negotiation,
    auth: TargetAuth,
    /// Whether a complete response went out already (TargetPortalGroupTag goes in the first).
    answered: bool,
}

/// Where the security stage is, on the target.
enum TargetAuth {
    AwaitMethod,
    AwaitChapA(ChapTarget),
    AwaitChapResponse(ChapTarget),
    Done,
}

/// A failure on the target: the status to send and why.
struct Refuse {
    status: LoginStatus,
    reason: String,
    target_address: Option<String>,
}

fn refuse(status: LoginStatus, reason: impl Into<String>) -> Refuse {
    Refuse {
        status,
        reason: reason.into(),
        target_address: None,
    }
}

impl From<LoginRefusal> for Refuse {
    fn from(r: LoginRefusal) -> Refuse {
        Refuse {
            status: r.status,
            reason: r.reason,
            target_address: r.target_address,
        }
    }
}

impl<D: LoginDirectory> TargetLogin<D> {
    /// A login on a new connection. `random` fills buffers with fresh random bytes (the CHAP
    /// identifier and challenge); it is called here only.
    pub fn new(directory: D, config: TargetLoginConfig, random: &mut dyn FnMut(&mut [u8])) -> Self {
        let mut nonce = [0u8; 1 + CHAP_CHALLENGE_LEN];
        random(&mut nonce);
        let mut chap_challenge = [0u8; CHAP_CHALLENGE_LEN];
        chap_challenge.copy_from_slice(&nonce[1..]);
        TargetLogin {
            directory,
            config,
            chap_identifier: nonce[0],
            chap_challenge,
            pdus: 0,
            stat_sn: config.initial_stat_sn,
            exp_cmd_sn: SerialNumber(0),
            header: None,
            stage: Stage::SECURITY,
            partial: Vec::new(),
            outgoing: None,
            session: None,
            finished: false,
        }
    }

    /// Whether the login is over (an outcome was returned). Later PDUs are ignored.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The identity of the initiator, once its first complete request arrived.
    pub fn identity(&self) -> Option<&LoginIdentity> {
        self.session.as_ref().map(|s| &s.identity)
    }

    /// Feed one PDU received on the connection.
    pub fn handle(&mut self, pdu: Pdu) -> TargetLoginOutput {
        if self.finished {
            return TargetLoginOutput::default();
        }
        let itt = pdu.bhs.itt().unwrap_or(Itt::RESERVED);
        match self.step(pdu) {
            Ok(out) => out,
            Err(r) => self.fail(r, itt),
        }
    }

    fn step(&mut self, pdu: Pdu) -> Result<TargetLoginOutput, Refuse> {
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(refuse(
                LoginStatus::INITIATOR_ERROR,
                format!("login not finished after {MAX_LOGIN_PDUS} Login Requests"),
            ));
        }
        let Bhs::LoginRequest(req) = &pdu.bhs else {
            return Err(refuse(
                LoginStatus::INITIATOR_ERROR,
                format!("{} received during login", pdu.opcode()),
            ));
        };
        let req = req.clone();
        self.exp_cmd_sn = req.cmd_sn;
        if req.version_min > ISCSI_VERSION {
            return Err(refuse(
                LoginStatus::UNSUPPORTED_VERSION,
                format!(
                    "initiator speaks iSCSI versions {:#04x}..={:#04x}; this target only {ISCSI_VERSION:#04x}",
                    req.version_min, req.version_max
                ),
            ));
        }
        self.check_header(&req)?;

        if self.outgoing.is_some() {
            if !pdu.data.is_empty() || req.continue_bit {
                return Err(refuse(
                    LoginStatus::INITIATOR_ERROR,
                    "Login Request with text while the target's response was still continued (C bit)",
                ));
            }
            return Ok(self.next_chunk(req.itt));
        }

        if self.partial.len() + pdu.data.len() > MAX_LOGIN_TEXT {
            return Err(refuse(
                LoginStatus::INITIATOR_ERROR,
                format!("login text longer than {MAX_LOGIN_TEXT} bytes"),
            ));
        }
        self.partial.extend_from_slice(&pdu.data);
        if req.continue_bit {
            // Acknowledge the piece; the answer comes when the text is complete.
            let flags = ResponseFlags {
                transit: false,
                csg: req.csg,
                nsg: Stage(0),
                tsih: req.tsih,
            };
            let (resp, _) =
                self.response(flags, false, req.itt, Bytes::new(), LoginStatus::SUCCESS);
            return Ok(TargetLoginOutput {
                response: Some(resp),
                outcome: None,
            });
        }
        let data = std::mem::take(&mut self.partial);
        let text = TextParams::decode(&data)
            .map_err(|e| refuse(LoginStatus::INITIATOR_ERROR, format!("login text: {e}")))?;

        let mut session = match self.session.take() {
            Some(s) => s,
            None => Box::new(self.open_session(&req, &text)?),
        };
        let result = self.negotiate(&mut session, &req, &text);
        self.session = Some(session);
        result
    }

    /// ISID/TSIH/CID stay the same through a login, and the stages only move forward.
    fn check_header(&mut self, req: &LoginRequest) -> Result<(), Refuse> {
        if req.csg != Stage::SECURITY && req.csg != Stage::OPERATIONAL {
            return Err(refuse(
                LoginStatus::INITIATOR_ERROR,
                format!("CSG {} is not a login stage", req.csg),
            ));
        }
        match self.header {
            None => {
                self.header = Some((req.isid, req.tsih, req.cid));
                self.stage = req.csg;
            }
            Some((isid, tsih, cid)) => {
                if (isid, tsih, cid) != (req.isid, req.tsih, req.cid) {
                    return Err(refuse(
                        LoginStatus::INITIATOR_ERROR,
                        format!(
                            "{isid:?} {tsih:?} {cid:?} became {:?} {:?} {:?} during login",
                            req.isid, req.tsih, req.cid
                        ),
                    ));
                }
                if req.csg != self.stage {
                    return Err(refuse(
                        LoginStatus::INITIATOR_ERROR,
                        format!(
                            "Login Request in {} while the login is in {}",
                            req.csg, self.stage
                        ),
                    ));
                }
            }
        }
        if req.transit {
            if req.continue_bit {
                return Err(refuse(
                    LoginStatus::INITIATOR_ERROR,
                    "Login Request with both T and C bits (RFC 7143 §11.12)",
                ));
            }
            let forward = req.nsg == Stage::OPERATIONAL || req.nsg == Stage::FULL_FEATURE;
            if !forward || req.nsg.0 <= req.csg.0 {
                return Err(refuse(
                    LoginStatus::INITIATOR_ERROR,
                    format!("transit from {} to NSG {}", req.csg, req.nsg),
                ));
            }
        }
        Ok(())
    }

    /// The first complete request: who is this, and may they log in?
    fn open_session(&self, req: &LoginRequest, text: &TextParams) -> Result<TargetSession, Refuse> {
        let session_type = match text.get("SessionType") {
            None => SessionType::Normal,
            Some(v) => parse_session_type(v).ok_or_else(|| {
                refuse(
                    LoginStatus::INITIATOR_ERROR,
                    format!("SessionType={v} is neither Normal nor Discovery"),
                )
            })?,
        };
        let initiator_name = text
            .get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                refuse(
                    LoginStatus::MISSING_PARAMETER,
                    "the first Login Request carries no InitiatorName (RFC 7143 §11.12)",
                )
            })?;
        let target_name = text
            .get("TargetName")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if session_type == SessionType::Normal && target_name.is_none() {
            return Err(refuse(
                LoginStatus::MISSING_PARAMETER,
                "the first Login Request of a Normal session carries no TargetName",
            ));
        }
        let identity = LoginIdentity {
            initiator_name: initiator_name.to_string(),
            initiator_alias: text.get("InitiatorAlias").map(str::to_string),
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
            session_type,
            target_name,
        };
        let policy = self.directory.authorize(&identity)?;
        if let (Some(a), Some(b)) = (&policy.chap, &policy.mutual_chap) {
            if a.secret == b.secret {
                return Err(refuse(
                    LoginStatus::TARGET_ERROR,
                    "target misconfigured: one CHAP secret for both directions (RFC 7143 §12.1.3)",
                ));
            }
        }
        let mut negotiation = Negotiation::new(
            Role::Target,
            policy.proposal.clone(),
            session_type,
            identity.is_leading(),
        );
        let s = negotiation.session_mut();
        s.target_portal_group_tag = policy.target_portal_group_tag;
        if session_type == SessionType::Normal {
            s.target_alias = policy.target_alias.clone();
        }
        Ok(TargetSession {
            identity,
            policy,
            negotiation,
            auth: TargetAuth::AwaitMethod,
            answered: false,
        })
    }

    /// A complete request's text: authentication, negotiation, and the stage transition.
    fn negotiate(
        &mut self,
        s: &mut TargetSession,
        req: &LoginRequest,
        text: &TextParams,
    ) -> Result<TargetLoginOutput, Refuse> {
        let received = s
            .negotiation
            .receive(text)
            .map_err(|e| refuse(e.status(), e.to_string()))?;
        let mut answers = TextParams::new();
        if !s.answered {
            s.answered = true;
            // RFC 7143 §13.9: the first Login Response names the portal group, so the
            // initiator can tell which portals belong to the same group.
            if s.identity.target_name.is_some() {
                answers.push(
                    "TargetPortalGroupTag",
                    s.policy.target_portal_group_tag.to_string(),
                );
            }
            if let (SessionType::Normal, Some(alias)) =
                (s.identity.session_type, &s.policy.target_alias)
            {
                answers.push("TargetAlias", alias.clone());
            }
        }
        if req.csg == Stage::SECURITY {
            let nonce = (self.chap_identifier, self.chap_challenge);
            answers.extend(auth_step(s, &received.security, req.transit, nonce)?);
        } else {
            if let Some((k, _)) = received.security.iter().next() {
                return Err(refuse(
                    LoginStatus::INITIATOR_ERROR,
                    format!("{k} in the operational stage; authentication belongs to the security stage"),
                ));
            }
            if s.policy.chap.is_some() && !matches!(s.auth, TargetAuth::Done) {
                return Err(refuse(
                    LoginStatus::AUTHENTICATION_FAILURE,
                    "CHAP is required, but the initiator skipped the security stage",
                ));
            }
            s.auth = TargetAuth::Done;
        }
        answers.extend(received.answers);

        let transit = req.transit && matches!(s.auth, TargetAuth::Done);
        if req.csg == Stage::OPERATIONAL || (transit && req.nsg == Stage::FULL_FEATURE) {
            answers.extend(s.negotiation.declarations());
        }
        let mut complete = None;
        let mut flags = ResponseFlags {
            transit: false,
            csg: req.csg,
            nsg: Stage(0),
            tsih: req.tsih,
        };
        if transit {
            flags.transit = true;
            flags.nsg = req.nsg;
            if req.nsg == Stage::FULL_FEATURE {
                let (session, connection) = s
                    .negotiation
                    .finish()
                    .map_err(|e| refuse(e.status(), e.to_string()))?;
                let tsih = self.directory.admit(&s.identity, &session)?;
                if s.identity.is_leading() && tsih == Tsih(0) {
                    return Err(refuse(
                        LoginStatus::TARGET_ERROR,
                        "the directory admitted a new session with TSIH 0",
                    ));
                }
                flags.tsih = tsih;
                complete = Some(PendingComplete {
                    identity: s.identity.clone(),
                    session,
                    connection,
                    tsih,
                });
            }
        }

        let data = Bytes::from(answers.encode());
        let mut chunks: VecDeque<Bytes> = VecDeque::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + LOGIN_MAX_DATA_SEGMENT_LENGTH).min(data.len());
            chunks.push_back(data.slice(off..end));
            off = end;
        }
        if chunks.is_empty() {
            chunks.push_back(Bytes::new());
        }
        self.outgoing = Some(Outgoing {
            chunks,
            last: flags,
            complete,
        });
        Ok(self.next_chunk(req.itt))
    }

    /// The next piece of our response: C=1 while more follow, the real flags on the last.
    fn next_chunk(&mut self, itt: Itt) -> TargetLoginOutput {
        let Some(mut out) = self.outgoing.take() else {
            return TargetLoginOutput::default();
        };
        let data = out.chunks.pop_front().unwrap_or_default();
        if !out.chunks.is_empty() {
            let flags = ResponseFlags {
                transit: false,
                nsg: Stage(0),
                ..out.last
            };
            let tsih = self.header.map(|h| h.1).unwrap_or_default();
            let (resp, _) = self.response(
                ResponseFlags { tsih, ..flags },
                true,
                itt,
                data,
                LoginStatus::SUCCESS,
            );
            self.outgoing = Some(out);
            return TargetLoginOutput {
                response: Some(resp),
                outcome: None,
            };
        }
        // The new stage begins once the initiator has the whole response: until then its
        // empty requests collecting the pieces stay in the old one.
        if out.last.transit && out.last.nsg != Stage::FULL_FEATURE {
            self.stage = out.last.nsg;
        }
        let (resp, stat_sn) = self.response(out.last, false, itt, data, LoginStatus::SUCCESS);
        let outcome = out.complete.map(|c| {
            self.finished = true;
            let exp_cmd_sn = self.exp_cmd_sn;
            TargetLoginOutcome::Complete(Box::new(TargetLoginComplete {
                identity: c.identity,
                session: c.session,
                connection: c.connection,
                tsih: c.tsih,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
            }))
        });
        TargetLoginOutput {
            response: Some(resp),
            outcome,
        }
    }

    fn max_cmd_sn(&self) -> SerialNumber {
        self.exp_cmd_sn.plus(self.config.cmd_window.wrapping_sub(1))
    }

    /// Build a Login Response; returns it with the StatSN it carries.
    fn response(
        &mut self,
        flags: ResponseFlags,
        continue_bit: bool,
        itt: Itt,
        data: Bytes,
        status: LoginStatus,
    ) -> (Pdu, SerialNumber) {
        let stat_sn = self.stat_sn;
        self.stat_sn = stat_sn.next();
        let isid = self.header.map(|h| h.0).unwrap_or_default();
        let bhs = Bhs::LoginResponse(LoginResponse {
            transit: flags.transit,
            continue_bit,
            csg: flags.csg,
            nsg: flags.nsg,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid,
            tsih: flags.tsih,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            status,
        });
        (Pdu::with_data(bhs, data), stat_sn)
    }

    /// End the login with a failure status (or a redirection).
    fn fail(&mut self, r: Refuse, itt: Itt) -> TargetLoginOutput {
        self.finished = true;
        self.outgoing = None;
        let mut text = TextParams::new();
        if let Some(addr) = &r.target_address {
            text.push("TargetAddress", addr.clone());
        }
        let flags = ResponseFlags {
            transit: false,
            csg: self.stage,
            nsg: Stage(0),
            tsih: self.header.map(|h| h.1).unwrap_or_default(),
        };
        let (resp, _) = self.response(flags, false, itt, Bytes::from(text.encode()), r.status);
        TargetLoginOutput {
            response: Some(resp),
            outcome: Some(TargetLoginOutcome::Failed {
                status: r.status,
                reason: r.reason,
            }),
        }
    }
}

/// One step of the target's security stage (RFC 7143 §12.1.3): the keys received, the keys to
/// answer.
fn auth_step(
    s: &mut TargetSession,
    security: &TextParams,
    transit: bool,
    (identifier, challenge): (u8, [u8; CHAP_CHALLENGE_LEN]),
) -> Result<TextParams, Refuse> {
    let auth_failure = |why: String| refuse(LoginStatus::AUTHENTICATION_FAILURE, why);
    let only = |allowed: &[&str]| -> Result<(), Refuse> {
        match security.iter().find(|(k, _)| !allowed.contains(k)) {
            Some((k, _)) => Err(refuse(
                LoginStatus::INITIATOR_ERROR,
                format!("{k} out of order in the security stage"),
            )),
            None => Ok(()),
        }
    };
    let mut out = TextParams::new();
    match std::mem::replace(&mut s.auth, TargetAuth::Done) {
        TargetAuth::AwaitMethod => {
            only(&["AuthMethod"])?;
            match (security.get("AuthMethod"), &s.policy.chap) {
                (Some(offer), Some(creds)) => {
                    if !offer.split(',').any(|m| m == "CHAP") {
                        return Err(auth_failure(format!(
                            "CHAP is required, but the initiator offered AuthMethod={offer}"
                        )));
                    }
                    out.push("AuthMethod", "CHAP");
                    s.auth = TargetAuth::AwaitChapA(ChapTarget::new(
                        creds.clone(),
                        s.policy.mutual_chap.clone(),
                        identifier,
                        challenge.to_vec(),
                    ));
                }
                (Some(offer), None) => {
                    if !offer.split(',').any(|m| m == "None") {
                        return Err(auth_failure(format!(
                            "initiator offered AuthMethod={offer} without None, and this target \
                             has no CHAP account for it"
                        )));
                    }
                    out.push("AuthMethod", "None");
                }
                (None, Some(_)) if transit => {
                    return Err(auth_failure(
                        "CHAP is required, but the initiator left the security stage without \
                         offering AuthMethod"
                            .to_string(),
                    ));
                }
                (None, Some(_)) => s.auth = TargetAuth::AwaitMethod,
                // AuthMethod's default is None: leaving without offering it is no
                // authentication, which this policy accepts.
                (None, None) if transit => {}
                (None, None) => s.auth = TargetAuth::AwaitMethod,
            }
        }
        TargetAuth::AwaitChapA(chap) => {
            only(&["CHAP_A"])?;
            out = chap
                .challenge(security)
                .map_err(|e| auth_failure(e.to_string()))?;
            s.auth = TargetAuth::AwaitChapResponse(chap);
        }
        TargetAuth::AwaitChapResponse(chap) => {
            only(&["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"])?;
            out = chap.verify(security).map_err(|e| {
                auth_failure(format!("CHAP for {}: {e}", s.identity.initiator_name))
            })?;
        }
        TargetAuth::Done => {
            if let Some((k, _)) = security.iter().next() {
                return Err(refuse(
                    LoginStatus::INITIATOR_ERROR,
                    format!("{k} after authentication completed"),
                ));
            }
        }
    }
    Ok(out)
}

// ---- initiator --------------------------------------------------------------------------

/// Everything an initiator login needs to know.
#[derive(Clone, Debug)]
pub struct InitiatorLoginConfig {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub session_type: SessionType,
    /// Required for Normal sessions; optional for discovery.
    pub target_name: Option<String>,
    pub isid: Isid,
    /// 0 for a new session (or reinstatement of the session with this ISID); a session's
    /// TSIH to add a connection to it.
    pub tsih: Tsih,
    pub cid: Cid,
    /// ITT of every Login Request of this login.
    pub itt: Itt,
    /// The session's first CmdSN (new session) or its current CmdSN (added connection).
    pub cmd_sn: SerialNumber,
    /// ExpStatSN of the first Login Request (0 on a new connection).
    pub exp_stat_sn: SerialNumber,
    /// Authenticate with CHAP; `None` logs in without authentication.
    pub chap: Option<ChapCredentials>,
    /// Also authenticate the target (mutual CHAP): its expected CHAP name and secret.
    pub mutual_chap: Option<ChapCredentials>,
    pub proposal: Proposal,
    /// Private extension keys (`X-...`, `X#...`) to offer in the operational stage; their
    /// answers are accepted without interpretation.
    pub private_keys: TextParams,
}

impl InitiatorLoginConfig {
    /// A Normal session to `target_name`, no authentication, mpath's initiator defaults.
    pub fn normal(
        initiator_name: impl Into<String>,
        target_name: impl Into<String>,
        isid: Isid,
    ) -> Self {
        InitiatorLoginConfig {
            initiator_name: initiator_name.into(),
            initiator_alias: None,
            session_type: SessionType::Normal,
            target_name: Some(target_name.into()),
            isid,
            tsih: Tsih(0),
            cid: Cid(0),
            itt: Itt(0),
            cmd_sn: SerialNumber(0),
            exp_stat_sn: SerialNumber(0),
            chap: None,
            mutual_chap: None,
            proposal: Proposal::initiator(),
            private_keys: TextParams::new(),
        }
    }

    /// A discovery session (for SendTargets).
    pub fn discovery(initiator_name: impl Into<String>, isid: Isid) -> Self {
        InitiatorLoginConfig {
            session_type: SessionType::Discovery,
            target_name: None,
            ..InitiatorLoginConfig::normal(initiator_name, "", isid)
        }
    }
}

/// A configuration that cannot produce a valid login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginConfigError {
    #[error("InitiatorName is empty")]
    NoInitiatorName,
    #[error("a Normal session needs a TargetName")]
    NoTargetName,
    #[error("mutual CHAP needs the initiator's own CHAP credentials too")]
    MutualWithoutChap,
}

/// Why an initiator login failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginFailure {
    /// The status the target sent, or `None` when this side ended the login (the target
    /// broke the protocol or failed mutual authentication): close the connection.
    pub status: Option<LoginStatus>,
    pub reason: String,
    /// `TargetAddress` of a redirection (status class 0x01): log in there instead.
    pub redirect: Option<String>,
}

impl fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A successful initiator login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitiatorLoginComplete {
    pub session: SessionParams,
    pub connection: ConnectionParams,
    /// The session's TSIH (new, or the one joined).
    pub tsih: Tsih,
    /// StatSN of the final Login Response: ExpStatSN continues from `stat_sn + 1`.
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

/// What [`InitiatorLogin::handle`] asks for next.
#[derive(Debug)]
pub enum InitiatorLoginStep {
    /// Send this Login Request and wait for the response.
    Send(Pdu),
    /// The final Login Response arrived: switch to full feature phase.
    Complete(Box<InitiatorLoginComplete>),
    /// The login is over and failed: close the connection.
    Failed(LoginFailure),
}

/// The initiator side of one connection's login.
///
/// ```text
/// let mut login = InitiatorLogin::new(config)?;
/// send(login.start(&mut random));
/// for each received PDU:
///     match login.handle(pdu) { Send(p) => send(p), Complete(c) => break, Failed(f) => close }
/// ```
pub struct InitiatorLogin {
    config: InitiatorLoginConfig,
    negotiation: Negotiation,
    /// The stage we are in: CSG of our next request.
    stage: Stage,
    auth: InitiatorAuth,
    started: bool,
    finished: bool,
    pdus: u32,
    /// Flags of the last complete request we sent (the last piece of it).
    last: RequestFlags,
    exp_stat_sn: SerialNumber,
    /// Response text continued with the C bit, not complete yet.
    partial: Vec<u8>,
    /// Pieces of our request text still to send.
    outgoing: VecDeque<Bytes>,
    offered_operational: bool,
}

#[derive(Clone, Copy, Debug)]
struct RequestFlags {
    transit: bool,
    csg: Stage,
    nsg: Stage,
}

/// Where the security stage is, on the initiator.
enum InitiatorAuth {
    /// We offered AuthMethod and wait for the target's choice.
    AwaitMethod(ChapInitiator),
    /// We sent CHAP_A and wait for CHAP_I/CHAP_C.
    AwaitChallenge(ChapInitiator),
    /// We sent CHAP_N/CHAP_R and wait for the verdict (and the target's own response).
    AwaitResult(ChapInitiator),
    Done,
}

fn local_failure(reason: impl Into<String>) -> LoginFailure {
    LoginFailure {
        status: None,
        reason: reason.into(),
        redirect: None,
    }
}

impl InitiatorLogin {
    pub fn new(config: InitiatorLoginConfig) -> Result<Self, LoginConfigError> {
        if config.initiator_name.is_empty() {
            return Err(LoginConfigError::NoInitiatorName);
        }
        if config.session_type == SessionType::Normal
            && config.target_name.as_deref().unwrap_or("").is_empty()
        {
            return Err(LoginConfigError::NoTargetName);
        }
        if config.mutual_chap.is_some() && config.chap.is_none() {
            return Err(LoginConfigError::MutualWithoutChap);
        }
        let mut negotiation = Negotiation::new(
            Role::Initiator,
            config.proposal.clone(),
            config.session_type,
            config.tsih == Tsih(0),
        );
        let s = negotiation.session_mut();
        s.initiator_name = config.initiator_name.clone();
        s.initiator_alias = config.initiator_alias.clone();
        s.target_name = config.target_name.clone().unwrap_or_default();
        Ok(InitiatorLogin {
            negotiation,
            stage: Stage::SECURITY,
            auth: InitiatorAuth::Done,
            started: false,
            finished: false,
            pdus: 0,
            last: RequestFlags {
                transit: false,
                csg: Stage::SECURITY,
                nsg: Stage(0),
            },
            exp_stat_sn: config.exp_stat_sn,
            partial: Vec::new(),
            outgoing: VecDeque::new(),
            offered_operational: false,
            config,
        })
    }

    /// The first Login Request. `random` fills buffers with fresh random bytes (the mutual
    /// CHAP identifier and challenge); it is called here only.
    pub fn start(&mut self, random: &mut dyn FnMut(&mut [u8])) -> Pdu {
        self.started = true;
        let c = &self.config;
        let mut text = TextParams::new();
        text.push("InitiatorName", c.initiator_name.clone());
        if let Some(alias) = &c.initiator_alias {
            text.push("InitiatorAlias", alias.clone());
        }
        if let Some(t) = c.target_name.as_ref().filter(|t| !t.is_empty()) {
            text.push("TargetName", t.clone());
        }
        text.push(
            "SessionType",
            match c.session_type {
                SessionType::Normal => "Normal",
                SessionType::Discovery => "Discovery",
            },
        );
        let flags = match &c.chap {
            Some(creds) => {
                let mut nonce = [0u8; 1 + CHAP_CHALLENGE_LEN];
                random(&mut nonce);
                // Without mutual CHAP a target that authenticates nobody is fine too; with
                // it, the target must prove itself, so None is not offered.
                let offer = if c.mutual_chap.is_some() {
                    "CHAP"
                } else {
                    "CHAP,None"
                };
                text.push("AuthMethod", offer);
                self.auth = InitiatorAuth::AwaitMethod(ChapInitiator::new(
                    creds.clone(),
                    c.mutual_chap.clone(),
                    nonce[0],
                    nonce[1..].to_vec(),
                ));
                self.stage = Stage::SECURITY;
                RequestFlags {
                    transit: true,
                    csg: Stage::SECURITY,
                    nsg: Stage::OPERATIONAL,
                }
            }
            None => {
                // No security stage at all: operational keys go in the first request.
                self.stage = Stage::OPERATIONAL;
                self.offered_operational = true;
                let private = c.private_keys.clone();
                text.extend(self.negotiation.operational_offers(&private));
                RequestFlags {
                    transit: true,
                    csg: Stage::OPERATIONAL,
                    nsg: Stage::FULL_FEATURE,
                }
            }
        };
        self.send(text, flags)
    }

    /// Feed one PDU received on the connection.
    pub fn handle(&mut self, pdu: Pdu) -> InitiatorLoginStep {
        if !self.started || self.finished {
            return InitiatorLoginStep::Failed(local_failure(if self.started {
                "Login Response after the login ended"
            } else {
                "Login Response before the login started"
            }));
        }
        match self.step(pdu) {
            Ok(step) => {
                if !matches!(step, InitiatorLoginStep::Send(_)) {
                    self.finished = true;
                }
                step
            }
            Err(f) => {
                self.finished = true;
                InitiatorLoginStep::Failed(f)
            }
        }
    }

    fn step(&mut self, pdu: Pdu) -> Result<InitiatorLoginStep, LoginFailure> {
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(local_failure(format!(
                "target did not finish the login within {MAX_LOGIN_PDUS} Login Responses"
            )));
        }
        let Bhs::LoginResponse(resp) = &pdu.bhs else {
            return Err(local_failure(format!(
                "target sent {} during login",
                pdu.opcode()
            )));
        };
        let resp = resp.clone();
        if resp.itt != self.config.itt {
            return Err(local_failure(format!(
                "Login Response for {:?}, but the login uses {:?}",
                resp.itt, self.config.itt
            )));
        }
        if !resp.status.is_success() {
            let redirect = TextParams::decode(&pdu.data)
                .ok()
                .and_then(|t| t.get("TargetAddress").map(str::to_string));
            let reason = match (&redirect, resp.status.class()) {
                (Some(a), 0x01) => format!("target redirected to {a} ({})", resp.status),
                (None, 0x01) => format!(
                    "target redirected without a TargetAddress ({})",
                    resp.status
                ),
                _ => format!("target refused the login: {}", resp.status),
            };
            return Err(LoginFailure {
                status: Some(resp.status),
                reason,
                redirect,
            });
        }
        if resp.version_active != ISCSI_VERSION {
            return Err(local_failure(format!(
                "target chose iSCSI version {:#04x}; only {ISCSI_VERSION:#04x} exists",
                resp.version_active
            )));
        }
        if resp.isid != self.config.isid {
            return Err(local_failure(format!(
                "Login Response for {:?}, but the login uses {:?}",
                resp.isid, self.config.isid
            )));
        }
        self.exp_stat_sn = resp.stat_sn.next();

        if !self.outgoing.is_empty() {
            // The target acknowledges a piece of our continued request.
            if !pdu.data.is_empty() || resp.transit || resp.continue_bit {
                return Err(local_failure(
                    "target answered a continued Login Request (C bit) before it was complete",
                ));
            }
            return Ok(InitiatorLoginStep::Send(self.next_chunk()));
        }
        if resp.csg != self.last.csg {
            return Err(local_failure(format!(
                "Login Response in {} to a request in {}",
                resp.csg, self.last.csg
            )));
        }
        if resp.transit && resp.continue_bit {
            return Err(local_failure(
                "Login Response with both T and C bits (RFC 7143 §11.13)",
            ));
        }
        if self.partial.len() + pdu.data.len() > MAX_LOGIN_TEXT {
            return Err(local_failure(format!(
                "target's login text longer than {MAX_LOGIN_TEXT} bytes"
            )));
        }
        self.partial.extend_from_slice(&pdu.data);
        if resp.continue_bit {
            // Collect the rest with an empty request.
            let pdu = self.request(self.last, false, Bytes::new());
            return Ok(InitiatorLoginStep::Send(pdu));
        }
        let data = std::mem::take(&mut self.partial);
        let text = TextParams::decode(&data)
            .map_err(|e| local_failure(format!("target's login text: {e}")))?;

        if resp.transit {
            if !self.last.transit {
                return Err(local_failure(
                    "target set the T bit though the initiator did not ask to transit",
                ));
            }
            let forward = resp.nsg == Stage::OPERATIONAL || resp.nsg == Stage::FULL_FEATURE;
            if !forward || resp.nsg.0 <= resp.csg.0 || resp.nsg.0 > self.last.nsg.0 {
                return Err(local_failure(format!(
                    "target answered NSG {} to a request for NSG {}",
                    resp.nsg, self.last.nsg
                )));
            }
        }
        let received = self
            .negotiation
            .receive(&text)
            .map_err(|e| local_failure(e.to_string()))?;
        let mut next = TextParams::new();
        if resp.csg == Stage::SECURITY {
            next.extend(self.auth_step(&received.security, resp.transit)?);
        } else if let Some((k, _)) = received.security.iter().next() {
            return Err(local_failure(format!(
                "target sent {k} in the operational stage"
            )));
        }
        next.extend(received.answers);

        if resp.transit {
            if !matches!(self.auth, InitiatorAuth::Done) {
                return Err(local_failure(
                    "target left the security stage before authentication completed",
                ));
            }
            self.stage = resp.nsg;
            if resp.nsg == Stage::FULL_FEATURE {
                return self.complete(&resp, &next);
            }
        }
        let flags = if self.stage == Stage::OPERATIONAL {
            if !self.offered_operational {
                self.offered_operational = true;
                let private = self.config.private_keys.clone();
                let mut offers = self.negotiation.operational_offers(&private);
                offers.extend(next);
                next = offers;
            }
            RequestFlags {
                transit: true,
                csg: Stage::OPERATIONAL,
                nsg: Stage::FULL_FEATURE,
            }
        } else {
            RequestFlags {
                // Ask to move on once our part of CHAP is sent (as libiscsi does).
                transit: !matches!(self.auth, InitiatorAuth::AwaitChallenge(_)),
                csg: Stage::SECURITY,
                nsg: Stage::OPERATIONAL,
            }
        };
        Ok(InitiatorLoginStep::Send(self.send(next, flags)))
    }

    /// The final Login Response: check it and produce the outcome.
    fn complete(
        &mut self,
        resp: &LoginResponse,
        next: &TextParams,
    ) -> Result<InitiatorLoginStep, LoginFailure> {
        if let Some((k, v)) = next.iter().next() {
            return Err(local_failure(format!(
                "target offered keys in its final Login Response (answer {k}={v} would have no \
                 request to go in)"
            )));
        }
        let (session, connection) = self
            .negotiation
            .finish()
            .map_err(|e| local_failure(e.to_string()))?;
        let tsih_ok = if self.config.tsih == Tsih(0) {
            resp.tsih != Tsih(0)
        } else {
            resp.tsih == self.config.tsih
        };
        if !tsih_ok {
            return Err(local_failure(format!(
                "final Login Response carries {:?} for a login with {:?}",
                resp.tsih, self.config.tsih
            )));
        }
        Ok(InitiatorLoginStep::Complete(Box::new(
            InitiatorLoginComplete {
                session,
                connection,
                tsih: resp.tsih,
                stat_sn: resp.stat_sn,
                exp_cmd_sn: resp.exp_cmd_sn,
                max_cmd_sn: resp.max_cmd_sn,
            },
        )))
    }

    /// One step of the initiator's security stage: the target's keys in, ours out.
    fn auth_step(
        &mut self,
        security: &TextParams,
        transit: bool,
    ) -> Result<TextParams, LoginFailure> {
        let mut out = TextParams::new();
        match std::mem::replace(&mut self.auth, InitiatorAuth::Done) {
            InitiatorAuth::AwaitMethod(chap) => {
                match security.get("AuthMethod") {
                    Some("CHAP") => {
                        out = chap.algorithms();
                        self.auth = InitiatorAuth::AwaitChallenge(chap);
                    }
                    Some("None") if !chap.is_mutual() => {}
                    Some("None") => return Err(local_failure(
                        "target chose AuthMethod=None, but mutual CHAP is configured: the target \
                         must authenticate itself",
                    )),
                    Some(v) => {
                        return Err(local_failure(format!(
                            "target answered AuthMethod={v} to an offer of {}",
                            if chap.is_mutual() {
                                "CHAP"
                            } else {
                                "CHAP,None"
                            }
                        )))
                    }
                    None if transit && chap.is_mutual() => {
                        return Err(local_failure(
                            "target left the security stage without choosing an AuthMethod, but \
                         mutual CHAP is configured",
                        ))
                    }
                    None if transit => {}
                    None => self.auth = InitiatorAuth::AwaitMethod(chap),
                }
            }
            InitiatorAuth::AwaitChallenge(chap) => {
                out = chap
                    .respond(security)
                    .map_err(|e| local_failure(format!("CHAP: {e}")))?;
                self.auth = InitiatorAuth::AwaitResult(chap);
            }
            InitiatorAuth::AwaitResult(chap) => {
                if chap.is_mutual() {
                    if security.is_empty() && !transit {
                        self.auth = InitiatorAuth::AwaitResult(chap);
                    } else {
                        chap.verify_target(security)
                            .map_err(|e| local_failure(format!("mutual CHAP: {e}")))?;
                    }
                } else if let Some((k, _)) = security.iter().next() {
                    return Err(local_failure(format!(
                        "target sent {k} after the CHAP response without mutual CHAP"
                    )));
                }
            }
            InitiatorAuth::Done => {
                if let Some((k, _)) = security.iter().next() {
                    return Err(local_failure(format!(
                        "target sent {k} after authentication completed"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Send a complete text: one request, or C=1 pieces first when it is long.
    fn send(&mut self, text: TextParams, flags: RequestFlags) -> Pdu {
        self.last = flags;
        let data = Bytes::from(text.encode());
        let mut off = 0;
        while off < data.len() {
            let end = (off + LOGIN_MAX_DATA_SEGMENT_LENGTH).min(data.len());
            self.outgoing.push_back(data.slice(off..end));
            off = end;
        }
        if self.outgoing.is_empty() {
            self.outgoing.push_back(Bytes::new());
        }
        self.next_chunk()
    }

    fn next_chunk(&mut self) -> Pdu {
        let data = self.outgoing.pop_front().unwrap_or_default();
        if self.outgoing.is_empty() {
            self.request(self.last, false, data)
        } else {
            let flags = RequestFlags {
                transit: false,
                nsg: Stage(0),
                ..self.last
            };
            self.request(flags, true, data)
        }
    }

    fn request(&self, flags: RequestFlags, continue_bit: bool, data: Bytes) -> Pdu {
        let c = &self.config;
        Pdu::with_data(
            Bhs::LoginRequest(LoginRequest {
                transit: flags.transit,
                continue_bit,
                csg: flags.csg,
                nsg: flags.nsg,
                version_max: ISCSI_VERSION,
                version_min: ISCSI_VERSION,
                isid: c.isid,
                tsih: c.tsih,
                itt: c.itt,
                cid: c.cid,
                cmd_sn: c.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            data,
        )
    }
}
