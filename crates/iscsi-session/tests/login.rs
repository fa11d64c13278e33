//! Login phase: an `InitiatorLogin` driven against a `TargetLogin` in memory (every PDU goes
//! through the wire codec), hand-made misbehaving requests, and byte fixtures captured from
//! libiscsi 1.19 (iscsi-inq) and tgtd 1.0.85.

use std::cell::Cell;

use bytes::BytesMut;
use iscsi_pdu::{
    Bhs, Cid, DecodeConfig, Digests, Isid, Itt, LoginRequest, LoginStatus, Pdu, SerialNumber,
    Stage, TextParams, Tsih,
};
use iscsi_session::chap::{chap_response, ChapTarget};
use iscsi_session::login::{LOGIN_MAX_DATA_SEGMENT_LENGTH, MAX_LOGIN_PDUS};
use iscsi_session::{
    ChapCredentials, Digest, InitiatorLogin, InitiatorLoginComplete, InitiatorLoginConfig,
    InitiatorLoginStep, LoginDirectory, LoginFailure, LoginIdentity, LoginRefusal, Proposal,
    SessionParams, SessionType, TargetLogin, TargetLoginComplete, TargetLoginConfig,
    TargetLoginOutcome, TargetLoginPolicy,
};
use proptest::prelude::*;

const TARGET: &str = "iqn.2024-01.test.mpath:disk";
const INITIATOR: &str = "iqn.2024-01.test.mpath:host";
const ISID: Isid = Isid([0x80, 0x12, 0x34, 0x56, 0x00, 0x01]);

/// A directory with one target, an optional ACL and CHAP accounts.
#[derive(Clone)]
struct Directory {
    allowed: Option<&'static str>,
    chap: Option<ChapCredentials>,
    mutual: Option<ChapCredentials>,
    proposal: Proposal,
    redirect: Option<&'static str>,
    admitted: Cell<u32>,
}

impl Directory {
    fn open() -> Self {
        Directory {
            allowed: None,
            chap: None,
            mutual: None,
            proposal: Proposal::target(),
            redirect: None,
            admitted: Cell::new(0),
        }
    }
}

impl LoginDirectory for Directory {
    fn authorize(&self, id: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        if let Some(addr) = self.redirect {
            return Err(LoginRefusal::moved_temporarily(addr));
        }
        if id.session_type == SessionType::Normal && id.target_name.as_deref() != Some(TARGET) {
            return Err(LoginRefusal::new(
                LoginStatus::NOT_FOUND,
                format!("no target {:?}", id.target_name),
            ));
        }
        if let Some(a) = self.allowed {
            if a != id.initiator_name {
                return Err(LoginRefusal::new(
                    LoginStatus::AUTHORIZATION_FAILURE,
                    "not in the ACL",
                ));
            }
        }
        Ok(TargetLoginPolicy {
            chap: self.chap.clone(),
            mutual_chap: self.mutual.clone(),
            proposal: self.proposal.clone(),
            target_portal_group_tag: 7,
            target_alias: Some("disk".into()),
        })
    }

    fn admit(&self, id: &LoginIdentity, _: &SessionParams) -> Result<Tsih, LoginRefusal> {
        self.admitted.set(self.admitted.get() + 1);
        if id.tsih == Tsih(0) {
            Ok(Tsih(0x1234))
        } else if id.tsih == Tsih(0x1234) {
            Ok(id.tsih)
        } else {
            Err(LoginRefusal::new(
                LoginStatus::SESSION_DOES_NOT_EXIST,
                "no such session",
            ))
        }
    }
}

fn random(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = 0x30 + i as u8;
    }
}

/// Through the codec, as on a socket with no digests (login never uses them).
fn wire(pdu: &Pdu) -> Pdu {
    let mut buf = BytesMut::new();
    pdu.encode(Digests::NONE, &mut buf);
    let cfg = DecodeConfig::default();
    let p = Pdu::decode(&mut buf, &cfg)
        .expect("valid PDU")
        .expect("complete PDU");
    assert!(buf.is_empty());
    p
}

struct Run {
    initiator: Result<InitiatorLoginComplete, LoginFailure>,
    target: Option<TargetLoginOutcome>,
    requests: Vec<Pdu>,
    responses: Vec<Pdu>,
}

fn run(config: InitiatorLoginConfig, dir: &Directory) -> Run {
    run_with(
        config,
        dir,
        TargetLoginConfig {
            initial_stat_sn: SerialNumber(100),
            cmd_window: 32,
        },
    )
}

fn run_with(config: InitiatorLoginConfig, dir: &Directory, tcfg: TargetLoginConfig) -> Run {
    let mut init = InitiatorLogin::new(config).expect("valid config");
    let mut target = TargetLogin::new(dir, tcfg, &mut random);
    let mut req = init.start(&mut |b: &mut [u8]| b.fill(0xc3));
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    let mut target_outcome = None;
    for _ in 0..2 * MAX_LOGIN_PDUS {
        let r = wire(&req);
        requests.push(r.clone());
        let out = target.handle(r);
        if let Some(o) = out.outcome {
            target_outcome = Some(o);
        }
        let Some(resp) = out.response else {
            panic!("target sent nothing");
        };
        let resp = wire(&resp);
        responses.push(resp.clone());
        match init.handle(resp) {
            InitiatorLoginStep::Send(p) => req = p,
            InitiatorLoginStep::Complete(c) => {
                return Run {
                    initiator: Ok(*c),
                    target: target_outcome,
                    requests,
                    responses,
                }
            }
            InitiatorLoginStep::Failed(f) => {
                return Run {
                    initiator: Err(f),
                    target: target_outcome,
                    requests,
                    responses,
                }
            }
        }
    }
    panic!("login did not end");
}

fn config() -> InitiatorLoginConfig {
    let mut c = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
    c.itt = Itt(0x11);
    c.cmd_sn = SerialNumber(0x5000);
    c
}

fn complete(r: &Run) -> (&InitiatorLoginComplete, &TargetLoginComplete) {
    let i = match &r.initiator {
        Ok(c) => c,
        Err(f) => panic!("initiator failed: {f:?}; target: {:?}", r.target),
    };
    match &r.target {
        Some(TargetLoginOutcome::Complete(t)) => (i, t),
        other => panic!("target did not complete: {other:?}"),
    }
}

fn target_failure(r: &Run) -> (LoginStatus, &str) {
    match &r.target {
        Some(TargetLoginOutcome::Failed { status, reason }) => (*status, reason),
        other => panic!("target did not fail: {other:?}"),
    }
}

fn text_of(pdu: &Pdu) -> TextParams {
    TextParams::decode(&pdu.data).expect("text")
}

fn login_response(pdu: &Pdu) -> &iscsi_pdu::LoginResponse {
    match &pdu.bhs {
        Bhs::LoginResponse(r) => r,
        other => panic!("not a Login Response: {other:?}"),
    }
}

fn request(csg: Stage, nsg: Stage, transit: bool, text: &[(&str, &str)]) -> Pdu {
    let t: TextParams = text.iter().map(|(k, v)| (*k, *v)).collect();
    Pdu::with_data(
        Bhs::LoginRequest(LoginRequest {
            transit,
            continue_bit: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: ISID,
            tsih: Tsih(0),
            itt: Itt(1),
            cid: Cid(0),
            cmd_sn: SerialNumber(1),
            exp_stat_sn: SerialNumber(0),
        }),
        t.encode(),
    )
}

fn identity_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ]
}

/// Feed hand-made requests to a fresh target; the outputs in order.
fn feed(dir: &Directory, pdus: Vec<Pdu>) -> Vec<iscsi_session::TargetLoginOutput> {
    let mut t = TargetLogin::new(dir, TargetLoginConfig::default(), &mut random);
    pdus.into_iter().map(|p| t.handle(wire(&p))).collect()
}

fn failed_with(out: &iscsi_session::TargetLoginOutput) -> LoginStatus {
    match &out.outcome {
        Some(TargetLoginOutcome::Failed { status, .. }) => {
            let resp = out.response.as_ref().expect("failure response");
            assert_eq!(login_response(resp).status, *status);
            *status
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---- whole logins -----------------------------------------------------------------------

#[test]
fn auth_none_login_completes_with_matching_parameters() {
    let dir = Directory::open();
    let r = run(config(), &dir);
    let (i, t) = complete(&r);
    // No CHAP: the initiator starts in the operational stage, one exchange.
    assert_eq!(r.requests.len(), 1);
    assert_eq!(i.session, t.session);
    assert_eq!(i.tsih, Tsih(0x1234));
    assert_eq!(t.tsih, Tsih(0x1234));
    assert_eq!(i.session.max_burst_length, 1_048_576);
    assert_eq!(i.session.first_burst_length, 262_144);
    assert!(i.session.immediate_data && !i.session.initial_r2t);
    assert_eq!(i.session.max_outstanding_r2t, 1);
    assert_eq!(i.session.target_portal_group_tag, 7);
    assert_eq!(i.session.target_alias.as_deref(), Some("disk"));
    assert_eq!(t.session.initiator_name, INITIATOR);
    assert_eq!(t.identity.target_name.as_deref(), Some(TARGET));
    // Each side's receive limit is the other's send limit.
    assert_eq!(
        i.connection.max_recv_data_segment_length,
        t.connection.max_send_data_segment_length
    );
    assert_eq!(
        t.connection.max_recv_data_segment_length,
        i.connection.max_send_data_segment_length
    );
    assert_eq!(i.connection.max_send_data_segment_length, 262_144);
    assert!(!i.connection.header_digest && !i.connection.data_digest);
    // Sequence numbers: StatSN starts where the caller said, ExpCmdSN is the login's CmdSN,
    // MaxCmdSN opens the window.
    assert_eq!(t.stat_sn, SerialNumber(100));
    assert_eq!(i.stat_sn, SerialNumber(100));
    assert_eq!(t.next_stat_sn(), SerialNumber(101));
    assert_eq!(i.exp_cmd_sn, SerialNumber(0x5000));
    assert_eq!(i.max_cmd_sn, SerialNumber(0x5000 + 31));
    let last = login_response(r.responses.last().unwrap());
    assert!(last.transit && last.csg == Stage::OPERATIONAL && last.nsg == Stage::FULL_FEATURE);
    assert_eq!(last.isid, ISID);
    assert_eq!(last.itt, Itt(0x11));
    let answers = text_of(r.responses.last().unwrap());
    assert_eq!(answers.get("TargetPortalGroupTag"), Some("7"));
    assert_eq!(answers.get("MaxRecvDataSegmentLength"), Some("262144"));
}

#[test]
fn chap_one_way() {
    let mut dir = Directory::open();
    dir.chap = Some(ChapCredentials::new("host", "initiator-secret"));
    let mut c = config();
    c.chap = Some(ChapCredentials::new("host", "initiator-secret"));
    let r = run(c.clone(), &dir);
    let (i, _) = complete(&r);
    assert_eq!(i.tsih, Tsih(0x1234));
    // AuthMethod, CHAP_A, CHAP_N/CHAP_R, then the operational stage.
    assert_eq!(r.requests.len(), 4);
    assert_eq!(text_of(&r.requests[0]).get("AuthMethod"), Some("CHAP,None"));
    assert_eq!(text_of(&r.responses[0]).get("AuthMethod"), Some("CHAP"));
    let ch = text_of(&r.responses[1]);
    assert_eq!(ch.get("CHAP_A"), Some("5"));
    assert_eq!(ch.get("CHAP_I"), Some("48"), "the caller's random byte");

    c.chap = Some(ChapCredentials::new("host", "wrong-secret"));
    let r = run(c.clone(), &dir);
    let (status, reason) = target_failure(&r);
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    assert!(reason.contains("CHAP_R does not match"), "{reason}");
    let f = r.initiator.unwrap_err();
    assert_eq!(f.status, Some(LoginStatus::AUTHENTICATION_FAILURE));

    c.chap = Some(ChapCredentials::new("somebody", "initiator-secret"));
    let r = run(c, &dir);
    assert_eq!(target_failure(&r).0, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_mutual() {
    let mut dir = Directory::open();
    dir.chap = Some(ChapCredentials::new("host", "initiator-secret"));
    dir.mutual = Some(ChapCredentials::new("disk", "target-secret!"));
    let mut c = config();
    c.chap = Some(ChapCredentials::new("host", "initiator-secret"));
    c.mutual_chap = Some(ChapCredentials::new("disk", "target-secret!"));
    let r = run(c.clone(), &dir);
    complete(&r);
    assert_eq!(text_of(&r.requests[0]).get("AuthMethod"), Some("CHAP"));
    let third = text_of(&r.requests[2]);
    assert!(third.get("CHAP_I").is_some() && third.get("CHAP_C").is_some());
    assert_eq!(text_of(&r.responses[2]).get("CHAP_N"), Some("disk"));

    // The target answers with another secret: the initiator refuses it.
    c.mutual_chap = Some(ChapCredentials::new("disk", "what-the-initiator-expects"));
    let r = run(c.clone(), &dir);
    let f = r.initiator.unwrap_err();
    assert_eq!(f.status, None);
    assert!(
        f.reason.starts_with("mutual CHAP: CHAP_R does not match"),
        "{}",
        f.reason
    );

    // The target has no mutual account: it cannot answer the initiator's challenge.
    dir.mutual = None;
    c.mutual_chap = Some(ChapCredentials::new("disk", "target-secret!"));
    let r = run(c, &dir);
    assert_eq!(target_failure(&r).0, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_but_initiator_offers_none() {
    let mut dir = Directory::open();
    dir.chap = Some(ChapCredentials::new("host", "initiator-secret"));
    // Our initiator without credentials skips the security stage entirely.
    let r = run(config(), &dir);
    let (status, reason) = target_failure(&r);
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    assert!(reason.contains("skipped the security stage"), "{reason}");
    assert_eq!(
        r.initiator.unwrap_err().status,
        Some(LoginStatus::AUTHENTICATION_FAILURE)
    );
    // An initiator that offers AuthMethod=None in the security stage.
    let mut keys = identity_keys();
    keys.push(("AuthMethod", "None"));
    let out = feed(
        &dir,
        vec![request(Stage::SECURITY, Stage::OPERATIONAL, true, &keys)],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::AUTHENTICATION_FAILURE);
    // Leaving the security stage without any AuthMethod.
    let out = feed(
        &dir,
        vec![request(
            Stage::SECURITY,
            Stage::FULL_FEATURE,
            true,
            &identity_keys(),
        )],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn directory_refusals() {
    let dir = Directory::open();
    let mut c = config();
    c.target_name = Some("iqn.2024-01.test.mpath:nothing".into());
    let r = run(c, &dir);
    assert_eq!(target_failure(&r).0, LoginStatus::NOT_FOUND);
    assert_eq!(
        r.initiator.unwrap_err().status,
        Some(LoginStatus::NOT_FOUND)
    );

    let mut dir = Directory::open();
    dir.allowed = Some("iqn.2024-01.test.mpath:someone-else");
    let r = run(config(), &dir);
    assert_eq!(target_failure(&r).0, LoginStatus::AUTHORIZATION_FAILURE);
    assert_eq!(dir.admitted.get(), 0);

    let mut dir = Directory::open();
    dir.redirect = Some("127.0.0.5:3260,2");
    let r = run(config(), &dir);
    let f = r.initiator.unwrap_err();
    assert_eq!(f.status, Some(LoginStatus::TARGET_MOVED_TEMPORARILY));
    assert_eq!(f.redirect.as_deref(), Some("127.0.0.5:3260,2"));
    assert_eq!(
        f.reason,
        "target redirected to 127.0.0.5:3260,2 (Target moved temporarily (0x0101))"
    );
}

#[test]
fn missing_parameters() {
    let dir = Directory::open();
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::FULL_FEATURE,
            true,
            &[("TargetName", TARGET), ("SessionType", "Normal")],
        )],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::MISSING_PARAMETER);
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::FULL_FEATURE,
            true,
            &[("InitiatorName", INITIATOR)],
        )],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::MISSING_PARAMETER);
}

#[test]
fn discovery_session() {
    let dir = Directory::open();
    let mut c = InitiatorLoginConfig::discovery(INITIATOR, ISID);
    c.itt = Itt(3);
    let r = run(c, &dir);
    let (i, t) = complete(&r);
    assert_eq!(i.session.session_type, SessionType::Discovery);
    assert_eq!(t.identity.target_name, None);
    let first = text_of(&r.requests[0]);
    assert_eq!(first.get("TargetName"), None);
    assert_eq!(
        first.get("MaxBurstLength"),
        None,
        "only discovery keys are offered"
    );
    assert_eq!(text_of(&r.responses[0]).get("TargetPortalGroupTag"), None);
    // Normal-session keys in a discovery login are irrelevant.
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::FULL_FEATURE,
            true,
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("MaxBurstLength", "65536"),
                ("ImmediateData", "No"),
            ],
        )],
    );
    let t = text_of(out[0].response.as_ref().unwrap());
    assert_eq!(t.get("MaxBurstLength"), Some("Irrelevant"));
    assert_eq!(t.get("ImmediateData"), Some("Irrelevant"));
    assert!(matches!(
        out[0].outcome,
        Some(TargetLoginOutcome::Complete(_))
    ));
}

#[test]
fn digests() {
    // (initiator's list, target's list, header digest result or None for a failed login)
    let cases: &[(&[Digest], &[Digest], Option<bool>)] = &[
        (
            &[Digest::Crc32c, Digest::None],
            &[Digest::Crc32c, Digest::None],
            Some(true),
        ),
        (
            &[Digest::None, Digest::Crc32c],
            &[Digest::Crc32c, Digest::None],
            Some(false),
        ),
        (
            &[Digest::None],
            &[Digest::Crc32c, Digest::None],
            Some(false),
        ),
        (
            &[Digest::Crc32c, Digest::None],
            &[Digest::None],
            Some(false),
        ),
        (&[Digest::Crc32c], &[Digest::None], None),
        (&[Digest::None], &[Digest::Crc32c], None),
    ];
    for (ours, theirs, want) in cases {
        let mut dir = Directory::open();
        dir.proposal.header_digest = theirs.to_vec();
        dir.proposal.data_digest = theirs.to_vec();
        let mut c = config();
        c.proposal.header_digest = ours.to_vec();
        c.proposal.data_digest = ours.to_vec();
        let r = run(c, &dir);
        match want {
            Some(on) => {
                let (i, t) = complete(&r);
                assert_eq!(i.connection.header_digest, *on, "{ours:?} vs {theirs:?}");
                assert_eq!(i.connection.data_digest, *on);
                assert_eq!(i.connection.digests(), t.connection.digests());
            }
            None => assert!(r.initiator.is_err(), "{ours:?} vs {theirs:?}"),
        }
    }
}

#[test]
fn numeric_and_boolean_rules_end_to_end() {
    type Set = fn(&mut Proposal, u32);
    type Get = fn(&SessionParams) -> u32;
    // (what, set on a proposal, read the result, initiator value, target value, result)
    let cases: &[(&str, Set, Get, u32, u32, u32)] = &[
        (
            "MaxBurstLength min",
            |p, v| p.max_burst_length = v,
            |s| s.max_burst_length,
            65536,
            1_048_576,
            65536,
        ),
        (
            "MaxBurstLength min'",
            |p, v| p.max_burst_length = v,
            |s| s.max_burst_length,
            1_048_576,
            131_072,
            131_072,
        ),
        (
            "MaxOutstandingR2T min",
            |p, v| p.max_outstanding_r2t = v as u16,
            |s| s.max_outstanding_r2t as u32,
            8,
            4,
            4,
        ),
        (
            "MaxConnections min",
            |p, v| p.max_connections = v as u16,
            |s| s.max_connections as u32,
            4,
            2,
            2,
        ),
        (
            "DefaultTime2Wait max",
            |p, v| p.default_time2wait = v as u16,
            |s| s.default_time2wait as u32,
            1,
            5,
            5,
        ),
        (
            "DefaultTime2Retain min",
            |p, v| p.default_time2retain = v as u16,
            |s| s.default_time2retain as u32,
            0,
            20,
            0,
        ),
        (
            "ImmediateData AND",
            |p, v| p.immediate_data = v == 1,
            |s| s.immediate_data as u32,
            1,
            0,
            0,
        ),
        (
            "ImmediateData AND'",
            |p, v| p.immediate_data = v == 1,
            |s| s.immediate_data as u32,
            1,
            1,
            1,
        ),
        (
            "InitialR2T OR",
            |p, v| p.initial_r2t = v == 1,
            |s| s.initial_r2t as u32,
            0,
            1,
            1,
        ),
        (
            "InitialR2T OR'",
            |p, v| p.initial_r2t = v == 1,
            |s| s.initial_r2t as u32,
            0,
            0,
            0,
        ),
        (
            "InitialR2T OR''",
            |p, v| p.initial_r2t = v == 1,
            |s| s.initial_r2t as u32,
            1,
            0,
            1,
        ),
        (
            "DataPDUInOrder OR",
            |p, v| p.data_pdu_in_order = v == 1,
            |s| s.data_pdu_in_order as u32,
            0,
            0,
            0,
        ),
        (
            "DataSequenceInOrder OR",
            |p, v| p.data_sequence_in_order = v == 1,
            |s| s.data_sequence_in_order as u32,
            0,
            1,
            1,
        ),
        (
            "ErrorRecoveryLevel min",
            |p, v| p.error_recovery_level = v as u8,
            |s| s.error_recovery_level as u32,
            2,
            0,
            0,
        ),
    ];
    for (what, set, get, ours, theirs, want) in cases {
        let mut dir = Directory::open();
        set(&mut dir.proposal, *theirs);
        let mut c = config();
        set(&mut c.proposal, *ours);
        let r = run(c, &dir);
        let (i, t) = complete(&r);
        assert_eq!(get(&i.session), *want, "{what}: initiator");
        assert_eq!(get(&t.session), *want, "{what}: target");
    }
}

#[test]
fn first_burst_never_exceeds_max_burst() {
    let dir = Directory::open();
    let mut c = config();
    c.proposal.max_burst_length = 65536;
    c.proposal.first_burst_length = 1_048_576;
    let r = run(c, &dir);
    let (i, t) = complete(&r);
    assert_eq!(i.session.first_burst_length, 65536);
    assert_eq!(t.session.first_burst_length, 65536);
    assert_eq!(
        text_of(&r.responses[0]).get("FirstBurstLength"),
        Some("65536")
    );
}

#[test]
fn illegal_answer_fails_the_initiator() {
    // A target that answers MaxBurstLength above the offer (min rule broken).
    let mut init = InitiatorLogin::new(config()).unwrap();
    let req = init.start(&mut random);
    let Bhs::LoginRequest(r) = &req.bhs else {
        unreachable!()
    };
    let resp = Pdu::with_data(
        Bhs::LoginResponse(iscsi_pdu::LoginResponse {
            transit: true,
            csg: Stage::OPERATIONAL,
            nsg: Stage::FULL_FEATURE,
            isid: r.isid,
            tsih: Tsih(9),
            itt: r.itt,
            ..Default::default()
        }),
        b"MaxBurstLength=2000000\0".to_vec(),
    );
    match init.handle(resp) {
        InitiatorLoginStep::Failed(f) => assert_eq!(
            f.reason,
            "target answered MaxBurstLength=2000000 to an offer of 1048576: larger than \
             offered, but the result is the minimum"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_and_private_keys_are_not_understood() {
    let dir = Directory::open();
    let mut keys = identity_keys();
    keys.extend([("X-com.example.fast", "Yes"), ("FancyNewKey", "1")]);
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::FULL_FEATURE,
            true,
            &keys,
        )],
    );
    let t = text_of(out[0].response.as_ref().unwrap());
    assert_eq!(t.get("X-com.example.fast"), Some("NotUnderstood"));
    assert_eq!(t.get("FancyNewKey"), Some("NotUnderstood"));
    assert!(matches!(
        out[0].outcome,
        Some(TargetLoginOutcome::Complete(_))
    ));
}

#[test]
fn key_offered_twice_fails() {
    let dir = Directory::open();
    let mut keys = identity_keys();
    keys.extend([("MaxBurstLength", "65536"), ("MaxBurstLength", "65536")]);
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::FULL_FEATURE,
            true,
            &keys,
        )],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::INITIATOR_ERROR);
    // Across two requests of one login.
    let mut keys = identity_keys();
    keys.push(("MaxBurstLength", "65536"));
    let out = feed(
        &dir,
        vec![
            request(Stage::OPERATIONAL, Stage::FULL_FEATURE, false, &keys),
            request(
                Stage::OPERATIONAL,
                Stage::FULL_FEATURE,
                true,
                &[("MaxBurstLength", "8192")],
            ),
        ],
    );
    assert!(out[0].outcome.is_none());
    assert_eq!(failed_with(&out[1]), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn long_text_is_split_with_the_c_bit_both_ways() {
    let dir = Directory::open();
    let mut c = config();
    // ~24 KiB of private keys: the request needs 3 PDUs, and the NotUnderstood answers too.
    for n in 0..600 {
        c.private_keys.push(
            format!("X-com.example.key-{n:04}"),
            "a-value-of-some-length",
        );
    }
    let r = run(c, &dir);
    let (i, _) = complete(&r);
    assert_eq!(i.session.max_burst_length, 1_048_576);
    for p in r.requests.iter().chain(&r.responses) {
        assert!(p.data.len() <= LOGIN_MAX_DATA_SEGMENT_LENGTH);
    }
    let continued_requests = r
        .requests
        .iter()
        .filter(|p| matches!(&p.bhs, Bhs::LoginRequest(q) if q.continue_bit))
        .count();
    let continued_responses = r
        .responses
        .iter()
        .filter(|p| login_response(p).continue_bit)
        .count();
    assert!(continued_requests >= 2, "{continued_requests}");
    assert!(continued_responses >= 1, "{continued_responses}");
    // Only the last response may transit.
    for p in &r.responses[..r.responses.len() - 1] {
        assert!(!login_response(p).transit);
    }
    // StatSN advances by one per Login Response.
    for (n, p) in r.responses.iter().enumerate() {
        assert_eq!(login_response(p).stat_sn, SerialNumber(100 + n as u32));
    }
}

#[test]
fn unsupported_version() {
    let dir = Directory::open();
    let mut req = request(
        Stage::OPERATIONAL,
        Stage::FULL_FEATURE,
        true,
        &identity_keys(),
    );
    if let Bhs::LoginRequest(r) = &mut req.bhs {
        r.version_max = 2;
        r.version_min = 1;
    }
    let out = feed(&dir, vec![req]);
    assert_eq!(failed_with(&out[0]), LoginStatus::UNSUPPORTED_VERSION);
}

#[test]
fn unexpected_pdu_during_login() {
    let dir = Directory::open();
    let nop = Pdu::new(Bhs::NopOut(iscsi_pdu::NopOut {
        itt: Itt(5),
        ..Default::default()
    }));
    let out = feed(&dir, vec![nop]);
    assert_eq!(failed_with(&out[0]), LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        login_response(out[0].response.as_ref().unwrap()).itt,
        Itt(5)
    );
}

#[test]
fn stages_only_move_forward() {
    let dir = Directory::open();
    let out = feed(
        &dir,
        vec![
            request(
                Stage::OPERATIONAL,
                Stage::FULL_FEATURE,
                false,
                &identity_keys(),
            ),
            request(Stage::SECURITY, Stage::OPERATIONAL, true, &[]),
        ],
    );
    assert_eq!(failed_with(&out[1]), LoginStatus::INITIATOR_ERROR);
    let out = feed(
        &dir,
        vec![request(
            Stage::OPERATIONAL,
            Stage::SECURITY,
            true,
            &identity_keys(),
        )],
    );
    assert_eq!(failed_with(&out[0]), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn security_stage_straight_to_full_feature_phase() {
    // AuthMethod=None and T=1 with NSG=FullFeaturePhase: the operational stage is skipped,
    // every operational key keeps its RFC default, and the target still declares its
    // MaxRecvDataSegmentLength in the final response.
    let dir = Directory::open();
    let mut keys = identity_keys();
    keys.push(("AuthMethod", "CHAP,None"));
    let out = feed(
        &dir,
        vec![request(Stage::SECURITY, Stage::FULL_FEATURE, true, &keys)],
    );
    let resp = out[0].response.as_ref().unwrap();
    let lr = login_response(resp);
    assert!(lr.transit && lr.csg == Stage::SECURITY && lr.nsg == Stage::FULL_FEATURE);
    let t = text_of(resp);
    assert_eq!(t.get("AuthMethod"), Some("None"));
    assert_eq!(t.get("MaxRecvDataSegmentLength"), Some("262144"));
    match &out[0].outcome {
        Some(TargetLoginOutcome::Complete(c)) => {
            assert_eq!(c.session.max_burst_length, 262_144, "RFC default");
            assert!(c.session.initial_r2t, "RFC default");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn connection_added_to_a_session() {
    let dir = Directory::open();
    let mut c = config();
    c.tsih = Tsih(0x1234);
    c.cid = Cid(1);
    let r = run(c.clone(), &dir);
    let (i, t) = complete(&r);
    assert_eq!(i.tsih, Tsih(0x1234));
    assert_eq!(t.identity.cid, Cid(1));
    let first = text_of(&r.requests[0]);
    assert_eq!(
        first.get("MaxBurstLength"),
        None,
        "session keys stay with the session"
    );
    assert!(first.get("HeaderDigest").is_some());
    c.tsih = Tsih(0x4321);
    let r = run(c, &dir);
    assert_eq!(target_failure(&r).0, LoginStatus::SESSION_DOES_NOT_EXIST);
}

#[test]
fn login_never_outlasts_its_pdu_budget() {
    // An initiator that keeps sending T=0 requests forever.
    let dir = Directory::open();
    let mut pdus = vec![request(
        Stage::OPERATIONAL,
        Stage::FULL_FEATURE,
        false,
        &identity_keys(),
    )];
    for _ in 0..MAX_LOGIN_PDUS + 5 {
        pdus.push(request(Stage::OPERATIONAL, Stage::FULL_FEATURE, false, &[]));
    }
    let out = feed(&dir, pdus);
    let end = out.iter().position(|o| o.outcome.is_some()).unwrap();
    assert_eq!(end as u32, MAX_LOGIN_PDUS);
    assert!(out[end + 1..].iter().all(|o| o.response.is_none()));
}

// ---- fixtures from real peers ------------------------------------------------------------

const LIBISCSI_LOGIN: &[u8] = include_bytes!("fixtures/libiscsi-1.19-login-request.bin");
const TGTD_LOGIN: &[u8] = include_bytes!("fixtures/tgtd-1.0.85-login-response.bin");
const TGTD_CHAP_CHALLENGE: &[u8] = include_bytes!("fixtures/tgtd-1.0.85-chap-challenge.bin");
const LIBISCSI_CHAP_RESPONSE: &[u8] = include_bytes!("fixtures/libiscsi-1.19-chap-response.bin");
const FIXTURE_TARGET: &str = "iqn.2024-01.test.mpath:fixture";
const FIXTURE_INITIATOR: &str = "iqn.2024-01.test.mpath:initiator";

fn decode_fixture(bytes: &[u8]) -> Pdu {
    let (p, used) = Pdu::decode_slice(bytes, &DecodeConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(used, bytes.len());
    let mut again = BytesMut::new();
    p.encode(Digests::NONE, &mut again);
    assert_eq!(&again[..], bytes, "decode then encode gives the same bytes");
    p
}

struct FixtureDirectory;

impl LoginDirectory for FixtureDirectory {
    fn authorize(&self, id: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        assert_eq!(id.initiator_name, FIXTURE_INITIATOR);
        assert_eq!(id.target_name.as_deref(), Some(FIXTURE_TARGET));
        Ok(TargetLoginPolicy::open(1))
    }
    fn admit(&self, _: &LoginIdentity, _: &SessionParams) -> Result<Tsih, LoginRefusal> {
        Ok(Tsih(0x0100))
    }
}

#[test]
fn our_target_answers_the_libiscsi_login_request() {
    let req = decode_fixture(LIBISCSI_LOGIN);
    let Bhs::LoginRequest(r) = &req.bhs else {
        panic!()
    };
    assert!(r.transit && r.csg == Stage::OPERATIONAL && r.nsg == Stage::FULL_FEATURE);
    let mut t = TargetLogin::new(FixtureDirectory, TargetLoginConfig::default(), &mut random);
    let out = t.handle(req.clone());
    let resp = out.response.unwrap();
    let a = text_of(&resp);
    // libiscsi offers HeaderDigest=None,CRC32C: the first value we support wins.
    assert_eq!(a.get("HeaderDigest"), Some("None"));
    assert_eq!(a.get("InitialR2T"), Some("No"));
    assert_eq!(a.get("MaxBurstLength"), Some("262144"));
    assert_eq!(a.get("FirstBurstLength"), Some("262144"));
    assert_eq!(a.get("DefaultTime2Retain"), Some("0"));
    assert_eq!(a.get("IFMarker"), Some("No"));
    assert_eq!(a.get("OFMarker"), Some("No"));
    assert_eq!(a.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(a.get("MaxRecvDataSegmentLength"), Some("262144"));
    let lr = login_response(&resp);
    assert!(lr.transit && lr.nsg == Stage::FULL_FEATURE && lr.status.is_success());
    assert_eq!((lr.isid, lr.itt, lr.tsih), (r.isid, r.itt, Tsih(0x0100)));
    assert_eq!(lr.exp_cmd_sn, r.cmd_sn);
    match out.outcome {
        Some(TargetLoginOutcome::Complete(c)) => {
            assert_eq!(c.session.max_burst_length, 262_144);
            assert_eq!(c.connection.max_send_data_segment_length, 262_144);
            assert!(!c.session.initial_r2t && c.session.immediate_data);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn our_initiator_accepts_the_tgtd_login_response() {
    let resp = decode_fixture(TGTD_LOGIN);
    let lr = login_response(&resp).clone();
    // The same ISID and ITT libiscsi used, so tgtd's response fits our request.
    let mut c = InitiatorLoginConfig::normal(FIXTURE_INITIATOR, FIXTURE_TARGET, lr.isid);
    c.itt = lr.itt;
    let mut init = InitiatorLogin::new(c).unwrap();
    init.start(&mut random);
    match init.handle(resp) {
        InitiatorLoginStep::Complete(c) => {
            assert_eq!(c.tsih, Tsih(0x0100));
            // tgtd 1.0.85 answers InitialR2T=Yes, caps bursts at 256 KiB / 64 KiB and does not
            // declare its MaxRecvDataSegmentLength (so the default 8192 holds).
            assert!(c.session.initial_r2t);
            assert_eq!(c.session.max_burst_length, 262_144);
            assert_eq!(c.session.first_burst_length, 65_536);
            assert_eq!(c.session.default_time2retain, 0);
            assert_eq!(c.session.target_portal_group_tag, 1);
            assert_eq!(c.connection.max_send_data_segment_length, 8192);
            assert_eq!(c.stat_sn, lr.stat_sn);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn chap_response_matches_libiscsi_against_tgtd() {
    let challenge = text_of(&decode_fixture(TGTD_CHAP_CHALLENGE));
    let response = decode_fixture(LIBISCSI_CHAP_RESPONSE);
    let answer = text_of(&response);
    let id: u8 = challenge.get("CHAP_I").unwrap().parse().unwrap();
    let c = iscsi_pdu::text::decode_binary(challenge.get("CHAP_C").unwrap()).unwrap();
    // The account was created with `tgtadm --user mpathuser --password secret123456`.
    let ours = chap_response(id, b"secret123456", &c);
    let theirs = iscsi_pdu::text::decode_binary(answer.get("CHAP_R").unwrap()).unwrap();
    assert_eq!(ours.to_vec(), theirs);
    // And our target, had it sent tgtd's challenge, accepts libiscsi's answer.
    let t = ChapTarget::new(
        ChapCredentials::new("mpathuser", "secret123456"),
        None,
        id,
        c,
    );
    assert_eq!(t.verify(&answer), Ok(TextParams::new()));
}

// ---- a misbehaving initiator -------------------------------------------------------------

const KEYS: &[&str] = &[
    "InitiatorName",
    "TargetName",
    "SessionType",
    "AuthMethod",
    "CHAP_A",
    "CHAP_N",
    "CHAP_R",
    "CHAP_I",
    "CHAP_C",
    "HeaderDigest",
    "MaxBurstLength",
    "FirstBurstLength",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "TargetPortalGroupTag",
    "SendTargets",
    "X-foo",
    "OFMarkInt",
];

const VALUES: &[&str] = &[
    INITIATOR,
    TARGET,
    "Normal",
    "Discovery",
    "CHAP",
    "None",
    "CHAP,None",
    "5",
    "7,5",
    "0x00",
    "0b",
    "Yes",
    "No",
    "512",
    "65536",
    "16777216",
    "Reject",
    "",
    "CRC32C,None",
    "0x1234",
];

fn arb_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(
            (0..KEYS.len(), 0..VALUES.len()).prop_map(|(k, v)| (KEYS[k], VALUES[v])),
            0..8
        )
        .prop_map(|pairs| pairs.into_iter().collect::<TextParams>().encode()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn arb_pdu() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, bool, u8, u8)>(),
        prop_oneof![Just(0u8), Just(0), Just(1)],
        prop_oneof![Just(0u16), Just(0), Just(0x1234)],
        arb_text(),
        0u8..20,
    )
        .prop_map(|((t, c, csg, nsg), vmin, tsih, data, kind)| {
            if kind == 0 {
                return Pdu::new(Bhs::NopOut(Default::default()));
            }
            Pdu::with_data(
                Bhs::LoginRequest(LoginRequest {
                    transit: t,
                    continue_bit: c && kind % 3 == 0,
                    csg: Stage(csg % 4),
                    nsg: Stage(nsg % 4),
                    version_max: 0,
                    version_min: vmin,
                    isid: ISID,
                    tsih: Tsih(tsih),
                    itt: Itt(1),
                    cid: Cid(0),
                    cmd_sn: SerialNumber(1),
                    exp_stat_sn: SerialNumber(0),
                }),
                data,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever an initiator sends, the target never panics, answers every PDU until the login
    /// ends, ends it within its PDU budget, and is silent afterwards.
    #[test]
    fn target_login_is_total_and_bounded(
        pdus in proptest::collection::vec(arb_pdu(), 1..12),
        chap in any::<bool>(),
    ) {
        let mut dir = Directory::open();
        if chap {
            dir.chap = Some(ChapCredentials::new("host", "initiator-secret"));
        }
        let mut t = TargetLogin::new(&dir, TargetLoginConfig::default(), &mut random);
        let mut ended = false;
        // Repeat the sequence past the budget: the login must end by then.
        for (n, p) in pdus.iter().cycle().take(MAX_LOGIN_PDUS as usize + 1).enumerate() {
            let out = t.handle(p.clone());
            if ended {
                prop_assert!(out.response.is_none() && out.outcome.is_none());
                continue;
            }
            prop_assert!(out.response.is_some(), "PDU {n} got no response");
            if let Some(r) = &out.response {
                prop_assert!(r.data.len() <= LOGIN_MAX_DATA_SEGMENT_LENGTH);
                let _ = wire(r);
            }
            if out.outcome.is_some() {
                ended = true;
            }
        }
        prop_assert!(ended, "the login did not end within {} PDUs", MAX_LOGIN_PDUS + 1);
    }
}

fn arb_response() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, bool, u8, u8)>(),
        prop_oneof![Just(0u16), Just(0), Just(0), Just(0x0201), Just(0x0101)],
        prop_oneof![Just(0u16), Just(0x10)],
        arb_text(),
        0u8..20,
    )
        .prop_map(|((t, c, csg, nsg), status, tsih, data, kind)| {
            if kind == 0 {
                return Pdu::new(Bhs::NopIn(Default::default()));
            }
            Pdu::with_data(
                Bhs::LoginResponse(iscsi_pdu::LoginResponse {
                    transit: t,
                    continue_bit: c && kind % 3 == 0,
                    csg: Stage(csg % 4),
                    nsg: Stage(nsg % 4),
                    isid: ISID,
                    tsih: Tsih(tsih),
                    itt: if kind == 1 { Itt(2) } else { Itt(0x11) },
                    status: LoginStatus(status),
                    ..Default::default()
                }),
                data,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever a target answers, the initiator never panics and its login ends within its
    /// PDU budget; every request it sends fits a login PDU.
    #[test]
    fn initiator_login_is_total_and_bounded(
        pdus in proptest::collection::vec(arb_response(), 1..12),
        chap in any::<bool>(),
    ) {
        let mut c = config();
        if chap {
            c.chap = Some(ChapCredentials::new("host", "initiator-secret"));
            c.mutual_chap = Some(ChapCredentials::new("disk", "target-secret!"));
        }
        let mut init = InitiatorLogin::new(c).unwrap();
        let first = init.start(&mut random);
        prop_assert!(first.data.len() <= LOGIN_MAX_DATA_SEGMENT_LENGTH);
        let mut ended = false;
        for p in pdus.iter().cycle().take(MAX_LOGIN_PDUS as usize + 1) {
            match init.handle(p.clone()) {
                InitiatorLoginStep::Send(r) => {
                    prop_assert!(!ended, "a request after the login ended");
                    prop_assert!(r.data.len() <= LOGIN_MAX_DATA_SEGMENT_LENGTH);
                    let _ = wire(&r);
                }
                InitiatorLoginStep::Complete(_) | InitiatorLoginStep::Failed(_) => ended = true,
            }
        }
        prop_assert!(ended);
    }
}
