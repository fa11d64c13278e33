//! The initiator side of full feature phase in simulated time: against our own target state
//! machine in memory, and against hand-made misbehaving targets.
#![allow(clippy::field_reassign_with_default)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi_pdu::*;
use iscsi_session::initiator::*;
use iscsi_session::target::*;
use iscsi_session::{ConnectionParams, SessionParams};
use proptest::prelude::*;

const LUN1: Lun = Lun([0, 1, 0, 0, 0, 0, 0, 0]);

fn read16(lba: u64, blocks: u32) -> Bytes {
    let mut c = vec![0x88u8, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    Bytes::from(c)
}

fn write16(lba: u64, blocks: u32) -> Bytes {
    let mut c = read16(lba, blocks).to_vec();
    c[0] = 0x8a;
    Bytes::from(c)
}

/// Our initiator wired to our target, with a RAM disk executing READ(16)/WRITE(16).
struct Pair {
    i: InitiatorConnection,
    t: TargetConnection,
    disk: Vec<u8>,
    now: Instant,
    done: HashMap<Itt, Result<CommandResponse, CommandError>>,
    failed: Option<Failure>,
}

impl Pair {
    fn new(session: SessionParams, i_conn: ConnectionParams, t_conn: ConnectionParams) -> Pair {
        let now = Instant::now();
        let sn = SerialNumber(0xffff_fff0); // wraps during the tests
        let i = InitiatorConnection::new(
            InitiatorConfig::default(),
            session.clone(),
            i_conn,
            sn,
            sn,
            sn.plus(63),
            SerialNumber(5),
            None,
            now,
        );
        let t = TargetConnection::new(
            TargetConfig::default(),
            session,
            t_conn,
            sn,
            sn.plus(63),
            SerialNumber(5),
            now,
        );
        Pair {
            i,
            t,
            disk: vec![0u8; 1 << 20],
            now,
            done: HashMap::new(),
            failed: None,
        }
    }

    /// Move PDUs both ways until quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(p) = self.i.poll_transmit() {
                moved = true;
                self.t.handle_pdu(p, self.now);
            }
            while let Some(ev) = self.t.poll_event() {
                if let TargetEvent::Execute(task) = ev {
                    let o = self.execute(&task);
                    self.t.complete(task.itt, o);
                }
            }
            while let Some(p) = self.t.poll_transmit() {
                moved = true;
                self.i.on_bytes_received(self.now);
                self.i.handle_pdu(p, self.now);
            }
            while let Some(ev) = self.i.poll_event() {
                match ev {
                    InitiatorEvent::Completed { itt, result } => {
                        assert!(
                            self.done.insert(itt, result).is_none(),
                            "{itt:?} completed twice"
                        );
                    }
                    InitiatorEvent::Failed(f) => self.failed = Some(f),
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn execute(&mut self, t: &ScsiTask) -> ScsiOutcome {
        let lba = u64::from_be_bytes(t.cdb[2..10].try_into().unwrap()) as usize * 512;
        let len = u32::from_be_bytes(t.cdb[10..14].try_into().unwrap()) as usize * 512;
        match t.cdb[0] {
            0x88 => ScsiOutcome {
                data_in: Bytes::copy_from_slice(&self.disk[lba..lba + len]),
                ..Default::default()
            },
            0x8a => {
                self.disk[lba..lba + len].copy_from_slice(&t.data_out[..len]);
                ScsiOutcome {
                    data_out_wanted: Some(len as u32),
                    ..Default::default()
                }
            }
            _ => ScsiOutcome::default(),
        }
    }

    fn submit(&mut self, cdb: Bytes, data: DataDir) -> Itt {
        self.i.submit(
            Command {
                lun: LUN1,
                cdb,
                data,
                attr: TaskAttr::SIMPLE,
            },
            self.now,
        )
    }

    fn ok(&mut self, itt: Itt) -> CommandResponse {
        match self.done.remove(&itt) {
            Some(Ok(r)) => r,
            other => panic!("{itt:?}: {other:?}, failure {:?}", self.failed),
        }
    }
}

fn params(
    imm: bool,
    r2t: bool,
    burst: u32,
    first: u32,
    seg: u32,
    out_r2t: u16,
) -> (SessionParams, ConnectionParams, ConnectionParams) {
    let mut s = SessionParams::default();
    s.immediate_data = imm;
    s.initial_r2t = r2t;
    s.max_burst_length = burst;
    s.first_burst_length = first.min(burst);
    s.max_outstanding_r2t = out_r2t;
    let mut i = ConnectionParams::default();
    let mut t = ConnectionParams::default();
    // What the initiator may send is what the target receives, and vice versa.
    i.max_send_data_segment_length = seg;
    t.max_recv_data_segment_length = seg;
    i.max_recv_data_segment_length = seg * 2;
    t.max_send_data_segment_length = seg * 2;
    (s, i, t)
}

proptest! {
    /// Writes then reads through both state machines, across negotiated parameters and
    /// transfer sizes: the data read back is the data written, and every command completes
    /// exactly once with GOOD.
    #[test]
    fn data_survives_every_negotiation(
        imm in any::<bool>(), r2t in any::<bool>(),
        burst in prop::sample::select(vec![512u32, 4096, 65536, 262144]),
        first in prop::sample::select(vec![512u32, 8192, 65536]),
        seg in prop::sample::select(vec![512u32, 8192, 65536]),
        out_r2t in 1u16..4,
        ios in prop::collection::vec((0u64..1500, 1u32..300, any::<u8>()), 1..12),
    ) {
        let (s, i, t) = params(imm, r2t, burst, first, seg, out_r2t);
        let mut p = Pair::new(s, i, t);
        let mut model = vec![0u8; 1 << 20];
        let mut itts = Vec::new();
        for (lba, blocks, byte) in &ios {
            let blocks = (*blocks).min(2048 - *lba as u32);
            let data = vec![*byte; blocks as usize * 512];
            model[*lba as usize * 512..][..data.len()].copy_from_slice(&data);
            itts.push(p.submit(write16(*lba, blocks), DataDir::Write(Bytes::from(data))));
            p.run();
        }
        for itt in itts {
            prop_assert_eq!(p.ok(itt).status, 0);
        }
        let r = p.submit(read16(0, 2048), DataDir::Read(1 << 20));
        p.run();
        let got = p.ok(r);
        prop_assert!(got.data == model, "data read back differs");
        prop_assert!(p.failed.is_none());
    }
}

#[test]
fn many_outstanding_commands_within_the_window() {
    let (s, i, t) = params(true, false, 262144, 65536, 8192, 1);
    let mut p = Pair::new(s, i, t);
    let itts: Vec<Itt> = (0..200)
        .map(|n| p.submit(read16(n, 1), DataDir::Read(512)))
        .collect();
    // The window (64) limits what goes out before the target answers.
    let mut sent = 0;
    while let Some(pdu) = p.i.poll_transmit() {
        assert!(matches!(pdu.bhs, Bhs::ScsiCommand(_)));
        sent += 1;
        p.t.handle_pdu(pdu, p.now);
    }
    assert_eq!(sent, 64);
    p.run();
    for itt in itts {
        assert_eq!(p.ok(itt).data.len(), 512);
    }
}

// ---- hand-made targets -----------------------------------------------------------------

struct Lone {
    i: InitiatorConnection,
    now: Instant,
    t0: Instant,
}

fn lone() -> Lone {
    let now = Instant::now();
    let i = InitiatorConnection::new(
        InitiatorConfig::default(),
        SessionParams::default(),
        ConnectionParams::default(),
        SerialNumber(10),
        SerialNumber(10),
        SerialNumber(40),
        SerialNumber(100),
        Some(Duration::from_micros(200)),
        now,
    );
    Lone { i, now, t0: now }
}

impl Lone {
    fn read(&mut self, len: u32) -> Itt {
        self.i.submit(
            Command {
                lun: LUN1,
                cdb: read16(0, len / 512),
                data: DataDir::Read(len),
                attr: TaskAttr::SIMPLE,
            },
            self.now,
        )
    }
    fn sent(&mut self) -> Vec<Pdu> {
        std::iter::from_fn(|| self.i.poll_transmit()).collect()
    }
    fn events(&mut self) -> Vec<InitiatorEvent> {
        std::iter::from_fn(|| self.i.poll_event()).collect()
    }
    fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
        self.i.handle_timeout(self.now);
    }
    fn recv(&mut self, pdu: Pdu) {
        self.i.on_bytes_received(self.now);
        self.i.handle_pdu(pdu, self.now);
    }
    fn failure(&mut self) -> Option<Failure> {
        self.events().into_iter().find_map(|e| match e {
            InitiatorEvent::Failed(f) => Some(f),
            _ => None,
        })
    }
}

fn data_in(itt: Itt, data_sn: u32, offset: u32, data: Vec<u8>, status: bool) -> Pdu {
    Pdu::with_data(
        Bhs::DataIn(DataIn {
            final_bit: status,
            status_present: status,
            itt,
            data_sn: SerialNumber(data_sn),
            buffer_offset: offset,
            stat_sn: SerialNumber(100),
            exp_cmd_sn: SerialNumber(11),
            max_cmd_sn: SerialNumber(40),
            ttt: Ttt::RESERVED,
            ..Default::default()
        }),
        data,
    )
}

#[test]
fn silent_blackhole_with_commands_outstanding_fails_within_350ms() {
    let mut l = lone();
    l.read(4096);
    l.sent();
    // 100 ms of silence: a NOP-Out ping goes out, immediate.
    l.at(99);
    assert!(l.sent().is_empty());
    l.at(100);
    let ping = l.sent();
    assert!(matches!(&ping[0].bhs, Bhs::NopOut(n) if n.immediate && n.itt != Itt::RESERVED));
    // The ping timeout is the floor (250 ms) on a fast link.
    l.at(349);
    assert!(l.failure().is_none());
    l.at(350);
    let f = l.failure().expect("declared dead");
    assert_eq!(f.kind, FailureKind::Stalled);
    assert!(f.detail.contains("1 commands outstanding"), "{}", f.detail);
    // Handing back what was in flight.
    let back = l.i.take_all();
    assert_eq!(back.len(), 1);
}

#[test]
fn a_starved_process_gives_the_stall_ping_one_more_timeout() {
    let mut l = lone();
    l.read(4096);
    l.sent();
    l.at(100);
    let _ping = l.sent();
    assert_eq!(l.i.ping_sent(), Some(l.t0 + Duration::from_millis(100)));
    // The process did not run for 40 ms: under a quarter of the 250 ms timeout, no change.
    assert!(!l.i.starved(Duration::from_millis(40), l.now));
    // It did not run for 200 ms: the silence may be ours; the ping starts over, once.
    l.at(340);
    assert!(l.i.starved(Duration::from_millis(200), l.now));
    assert!(
        !l.i.starved(Duration::from_millis(200), l.now),
        "only once per ping"
    );
    l.at(350);
    assert!(l.failure().is_none(), "not failed at the first deadline");
    // Still silent a whole timeout later: a real stall, and the reason says what happened.
    l.at(589);
    assert!(l.failure().is_none());
    l.at(590);
    let f = l.failure().expect("declared dead");
    assert_eq!(f.kind, FailureKind::Stalled);
    assert!(f.detail.contains("starved"), "{}", f.detail);
}

#[test]
fn a_slow_but_alive_target_is_never_failed() {
    let mut l = lone();
    let itt = l.read(512 * 8);
    l.sent();
    // The target answers every command 300 ms late; its ping answer too.
    l.at(100);
    let _ping = l.sent();
    l.at(300);
    l.recv(data_in(itt, 0, 0, vec![1; 4096], true));
    l.at(400);
    l.at(1000);
    let ev = l.events();
    assert!(
        ev.iter().all(|e| !matches!(e, InitiatorEvent::Failed(_))),
        "{ev:?}"
    );
    assert!(ev
        .iter()
        .any(|e| matches!(e, InitiatorEvent::Completed { result: Ok(_), .. })));
}

#[test]
fn any_byte_is_progress() {
    let mut l = lone();
    let itt = l.read(1 << 20);
    l.sent();
    // A large Data-In trickles in: bytes every 200 ms, never a whole PDU for a while.
    for ms in (200..2000).step_by(200) {
        l.now = l.t0 + Duration::from_millis(ms);
        l.i.on_bytes_received(l.now);
        l.i.handle_timeout(l.now);
        let _ = l.sent();
    }
    assert!(l.failure().is_none());
    let _ = itt;
}

#[test]
fn stall_ping_timeout_adapts_to_a_slow_link() {
    let mut l = lone();
    // Idle keepalives measure a 400 ms round trip, again and again.
    let mut ms = 0;
    for _ in 0..30 {
        ms += 1000;
        l.at(ms);
        let ping = l.sent();
        let Bhs::NopOut(n) = &ping[0].bhs else {
            panic!("{ping:?}")
        };
        ms += 400;
        l.now = l.t0 + Duration::from_millis(ms);
        l.recv(Pdu::new(Bhs::NopIn(NopIn {
            itt: n.itt,
            ttt: Ttt::RESERVED,
            stat_sn: SerialNumber(100),
            exp_cmd_sn: SerialNumber(10),
            max_cmd_sn: SerialNumber(40),
            ..Default::default()
        })));
    }
    let srtt = l.i.srtt().unwrap();
    assert!(srtt > Duration::from_millis(390), "{srtt:?}");
    // Now busy: the stall ping gets 4 × SRTT (≈ 1.6 s), not the 250 ms floor — a link this
    // slow is not failed for being slow.
    l.t0 = l.now;
    l.read(512);
    l.sent();
    l.at(100);
    assert_eq!(l.sent().len(), 1, "stall ping");
    l.at(350);
    assert!(l.failure().is_none(), "failed at the floor on a slow link");
    l.at(100 + (srtt * 4).as_millis() as u64 - 1);
    assert!(l.failure().is_none());
    l.at(100 + (srtt * 4).as_millis() as u64 + 1);
    assert_eq!(l.failure().map(|f| f.kind), Some(FailureKind::Stalled));
}

#[test]
fn idle_keepalive_1s_1s() {
    let mut l = lone();
    l.at(999);
    assert!(l.sent().is_empty());
    l.at(1000);
    assert_eq!(l.sent().len(), 1);
    l.at(1999);
    assert!(l.failure().is_none());
    l.at(2000);
    assert_eq!(
        l.failure().map(|f| f.kind),
        Some(FailureKind::KeepaliveTimeout)
    );
}

#[test]
fn answered_keepalive_keeps_going() {
    let mut l = lone();
    for round in 0..5u64 {
        l.at(1000 * (round + 1) + round * 10);
        let ping = l.sent();
        let Bhs::NopOut(n) = &ping[0].bhs else {
            panic!("{ping:?}")
        };
        l.now += Duration::from_millis(10);
        l.recv(Pdu::new(Bhs::NopIn(NopIn {
            itt: n.itt,
            ttt: Ttt::RESERVED,
            stat_sn: SerialNumber(100),
            exp_cmd_sn: SerialNumber(10),
            max_cmd_sn: SerialNumber(40),
            ..Default::default()
        })));
    }
    assert!(l.failure().is_none());
}

#[test]
fn wrong_data_is_never_delivered() {
    for (name, pdus) in [
        (
            "DataSN gap",
            vec![
                data_in(Itt(1), 0, 0, vec![0; 512], false),
                data_in(Itt(1), 2, 512, vec![0; 512], true),
            ],
        ),
        (
            "offset gap",
            vec![
                data_in(Itt(1), 0, 0, vec![0; 512], false),
                data_in(Itt(1), 1, 1024, vec![0; 512], true),
            ],
        ),
        (
            "beyond EDTL",
            vec![data_in(Itt(1), 0, 0, vec![0; 1536], true)],
        ),
        (
            "unknown ITT",
            vec![data_in(Itt(77), 0, 0, vec![0; 512], true)],
        ),
        (
            "GOOD but short",
            vec![data_in(Itt(1), 0, 0, vec![0; 512], true)],
        ),
    ] {
        let mut l = lone();
        let itt = l.read(1024);
        assert_eq!(itt, Itt(1));
        l.sent();
        for p in pdus {
            l.recv(p);
        }
        let ev = l.events();
        assert!(
            ev.iter()
                .any(|e| matches!(e, InitiatorEvent::Failed(f) if f.kind == FailureKind::Protocol)),
            "{name}: {ev:?}"
        );
        assert!(
            !ev.iter()
                .any(|e| matches!(e, InitiatorEvent::Completed { result: Ok(_), .. })),
            "{name}: completed with wrong data"
        );
    }
}

#[test]
fn underflow_residual_is_honoured() {
    let mut l = lone();
    let itt = l.read(1024);
    l.sent();
    let mut p = data_in(itt, 0, 0, vec![7; 512], true);
    if let Bhs::DataIn(d) = &mut p.bhs {
        d.underflow = true;
        d.residual_count = 512;
    }
    l.recv(p);
    let ev = l.events();
    let r = ev
        .iter()
        .find_map(|e| match e {
            InitiatorEvent::Completed { result: Ok(r), .. } => Some(r.clone()),
            _ => None,
        })
        .expect("completed");
    assert_eq!((r.data.len(), r.residual), (512, 512));
}

#[test]
fn closed_window_holds_commands_then_fails_if_it_never_opens() {
    let mut l = lone();
    // MaxCmdSN 40, CmdSN 10: 31 go out, the rest wait.
    for _ in 0..40 {
        l.read(512);
    }
    assert_eq!(l.sent().len(), 31);
    // A NOP-In opens the window by 5.
    l.recv(Pdu::new(Bhs::NopIn(NopIn {
        itt: Itt::RESERVED,
        ttt: Ttt::RESERVED,
        exp_cmd_sn: SerialNumber(11),
        max_cmd_sn: SerialNumber(45),
        ..Default::default()
    })));
    assert_eq!(l.sent().len(), 5);
    // A MaxCmdSN below ExpCmdSN-1 is invalid and ignored.
    l.recv(Pdu::new(Bhs::NopIn(NopIn {
        itt: Itt::RESERVED,
        ttt: Ttt::RESERVED,
        exp_cmd_sn: SerialNumber(50),
        max_cmd_sn: SerialNumber(20),
        ..Default::default()
    })));
    assert!(l.sent().is_empty());
    // Everything outstanding completes (target answers each), nothing is sent: the window
    // stays shut. It is a failure once nothing is outstanding for window_timeout.
    let itts: Vec<Itt> = (1..=36).map(Itt).collect();
    for itt in itts {
        l.recv(data_in(itt, 0, 0, vec![0; 512], true));
    }
    assert!(l.sent().is_empty());
    l.at(12_000);
    assert_eq!(l.failure().map(|f| f.kind), Some(FailureKind::Protocol));
}

#[test]
fn command_timeout_aborts_then_resets_then_fails() {
    let mut l = lone();
    let itt = l.read(512);
    l.sent();
    // The target stays alive (answers pings) but never completes the command.
    let mut ms = 0;
    let mut tmfs = Vec::new();
    while ms <= 45_000 && l.i.is_running() {
        ms += 50;
        l.at(ms);
        for p in l.sent() {
            match p.bhs {
                Bhs::NopOut(n) if n.itt != Itt::RESERVED => l.recv(Pdu::new(Bhs::NopIn(NopIn {
                    itt: n.itt,
                    ttt: Ttt::RESERVED,
                    exp_cmd_sn: SerialNumber(11),
                    max_cmd_sn: SerialNumber(40),
                    ..Default::default()
                }))),
                Bhs::TaskMgmtRequest(t) => tmfs.push((ms, t.function, t.referenced_task_tag)),
                _ => {}
            }
        }
    }
    assert_eq!(tmfs[0], (30_000, TmfFunction::ABORT_TASK, itt));
    assert_eq!(tmfs[1].1, TmfFunction::LOGICAL_UNIT_RESET);
    assert_eq!(tmfs[1].0, 35_000);
    assert_eq!(
        l.failure().map(|f| f.kind),
        Some(FailureKind::CommandTimeout)
    );
}

#[test]
fn abort_answered_completes_the_command_as_timed_out() {
    let mut l = lone();
    let itt = l.read(512);
    l.sent();
    l.i.on_bytes_received(l.t0 + Duration::from_secs(29));
    l.at(30_000);
    let tmf = l
        .sent()
        .into_iter()
        .find_map(|p| match p.bhs {
            Bhs::TaskMgmtRequest(t) => Some(t),
            _ => None,
        })
        .expect("ABORT TASK");
    l.recv(Pdu::new(Bhs::TaskMgmtResponse(TaskMgmtResponse {
        response: TmfResponse::COMPLETE,
        itt: tmf.itt,
        stat_sn: SerialNumber(100),
        exp_cmd_sn: SerialNumber(11),
        max_cmd_sn: SerialNumber(40),
    })));
    let ev = l.events();
    assert!(ev.iter().any(|e| matches!(e, InitiatorEvent::Completed { itt: i, result: Err(CommandError::TimedOut(_)) } if *i == itt)), "{ev:?}");
    assert!(l.i.is_running());
}

#[test]
fn target_ping_is_answered_and_async_logout_fails_the_connection() {
    let mut l = lone();
    l.recv(Pdu::with_data(
        Bhs::NopIn(NopIn {
            itt: Itt::RESERVED,
            ttt: Ttt(0x55),
            exp_cmd_sn: SerialNumber(10),
            max_cmd_sn: SerialNumber(40),
            ..Default::default()
        }),
        &b"ping"[..],
    ));
    let out = l.sent();
    let Bhs::NopOut(n) = &out[0].bhs else {
        panic!()
    };
    assert_eq!(
        (n.itt, n.ttt, n.immediate),
        (Itt::RESERVED, Ttt(0x55), true)
    );
    assert_eq!(&out[0].data[..], b"ping");
    l.recv(Pdu::new(Bhs::AsyncMessage(AsyncMessage {
        event: AsyncEvent::LOGOUT_REQUEST,
        exp_cmd_sn: SerialNumber(10),
        max_cmd_sn: SerialNumber(40),
        ..Default::default()
    })));
    assert_eq!(
        l.failure().map(|f| f.kind),
        Some(FailureKind::TargetRequest)
    );
}

#[test]
fn rejected_command_completes_with_the_reason() {
    let mut l = lone();
    let itt = l.read(512);
    let cmd = l.sent().remove(0);
    let mut hdr = bytes::BytesMut::new();
    cmd.encode_header(Digests::NONE, &mut hdr);
    l.recv(Pdu::with_data(
        Bhs::Reject(Reject {
            reason: RejectReason::INVALID_PDU_FIELD,
            exp_cmd_sn: SerialNumber(11),
            max_cmd_sn: SerialNumber(40),
            ..Default::default()
        }),
        hdr.freeze(),
    ));
    let ev = l.events();
    assert!(ev.iter().any(|e| matches!(e, InitiatorEvent::Completed { itt: i, result: Err(CommandError::Rejected(RejectReason::INVALID_PDU_FIELD)) } if *i == itt)), "{ev:?}");
}

#[test]
fn logout() {
    let mut l = lone();
    l.i.logout(l.now);
    let out = l.sent();
    let Bhs::LogoutRequest(r) = &out[0].bhs else {
        panic!()
    };
    l.recv(Pdu::new(Bhs::LogoutResponse(LogoutResponse {
        itt: r.itt,
        exp_cmd_sn: SerialNumber(10),
        max_cmd_sn: SerialNumber(40),
        ..Default::default()
    })));
    assert!(l
        .events()
        .iter()
        .any(|e| matches!(e, InitiatorEvent::LoggedOut)));
    assert!(l.i.poll_timeout().is_none());
}

/// `probe`: with a command outstanding the stall ping goes at once, and an unanswered one
/// fails the connection one ping timeout later (not 100 ms of silence first); idle, or with
/// a ping already out, a probe sends nothing; any byte answers it.
#[test]
fn a_probe_sends_the_stall_ping_at_once() {
    let mut l = lone();
    l.at(1);
    l.i.probe(l.now);
    assert!(l.sent().is_empty(), "idle: nothing to check");
    l.read(4096);
    l.sent();
    l.at(5);
    l.i.probe(l.now);
    let ping = l.sent();
    assert!(matches!(&ping[..], [p] if matches!(&p.bhs, Bhs::NopOut(n) if n.immediate)));
    l.i.probe(l.now);
    assert!(l.sent().is_empty(), "one ping out at a time");
    l.at(254);
    assert!(l.failure().is_none());
    l.at(255);
    assert_eq!(
        l.failure().expect("declared dead").kind,
        FailureKind::Stalled
    );

    // Alive: a byte after the probe answers it; nothing fails.
    let mut l = lone();
    l.read(4096);
    l.sent();
    l.at(5);
    l.i.probe(l.now);
    l.sent();
    l.at(20);
    l.i.on_bytes_received(l.now);
    l.at(260);
    assert!(l.failure().is_none());
}
