//! Shared by the socket-level tests: the target started in-process on loopback ports, and a
//! tiny raw iSCSI initiator that logs in with `InitiatorLogin` and then speaks hand-built
//! PDUs, so tests can send exactly the bytes they mean to — including wrong ones.
//!
//! Every helper that waits has a deadline: a test that hangs is a failure, not a stall.
// Each test file uses a different subset of the helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;
use iscsi_session::{
    InitiatorLogin, InitiatorLoginComplete, InitiatorLoginConfig, InitiatorLoginStep, Proposal,
};
use iscsi_target::backend::BackingSpec;
use iscsi_target::config::{LunSpec, PortalGroupSpec};
use iscsi_target::{AluaMode, AluaState, Control, Server, ServerConfig, TargetSpec};
use scsi::Sense;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TARGET: &str = "iqn.2026-01.test.mpath:robust";
pub const INITIATOR: &str = "iqn.2026-01.test.mpath:host";
/// The LUN every test target serves.
pub const LUN: u16 = 1;
pub const BLOCK: u32 = 512;
/// 16 MiB: room for the 1 MiB transfers, small enough to allocate lazily in no time.
pub const LUN_BYTES: u64 = 16 << 20;

/// How long a test waits for an answer that must come. Generous: the machine is shared.
pub const ANSWER: Duration = Duration::from_secs(5);
/// How long a test waits to conclude that no answer is coming.
pub const SILENCE: Duration = Duration::from_millis(400);

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

// ---- panics inside the target ------------------------------------------------------------

/// Panics raised outside the test files (in the target's tasks, which tokio would otherwise
/// swallow with the task).
static TARGET_PANICS: AtomicUsize = AtomicUsize::new(0);
static TARGET_PANIC_TEXT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|l| l.file().contains("tests/"));
            if !in_tests {
                TARGET_PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut v) = TARGET_PANIC_TEXT.lock() {
                    v.push(info.to_string());
                }
            }
            default(info);
        }));
    });
}

/// Fail if any code outside the tests panicked in this process so far.
pub fn assert_no_target_panics() {
    let n = TARGET_PANICS.load(Ordering::SeqCst);
    let text = TARGET_PANIC_TEXT
        .lock()
        .map(|v| v.join("\n"))
        .unwrap_or_default();
    assert_eq!(n, 0, "the target panicked:\n{text}");
}

// ---- the target --------------------------------------------------------------------------

/// A target served in-process until dropped.
pub struct TestTarget {
    pub portals: Vec<SocketAddr>,
    pub control: Control,
    pub config: ServerConfig,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestTarget {
    pub async fn start(cfg: ServerConfig) -> TestTarget {
        install_panic_counter();
        let server = Server::bind(cfg).await.expect("bind the target");
        let portals = server.portals();
        let control = server.control();
        let config = server.config().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestTarget {
            portals,
            control,
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A target with one memory LUN and one portal group per portal (tags 1, 2, ...).
    pub async fn memory(portals: &[&str]) -> TestTarget {
        TestTarget::start(config(portals, mem_backing())).await
    }

    pub fn portal(&self) -> SocketAddr {
        self.portals[0]
    }

    /// Stop serving and wait until every connection task was told to close.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(ANSWER, t)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn mem_backing() -> BackingSpec {
    BackingSpec::Memory { size: LUN_BYTES }
}

pub fn lun_spec(backing: BackingSpec) -> LunSpec {
    LunSpec {
        id: LUN,
        backing,
        block_size: BLOCK,
        serial: None,
        vendor: "MPATH".into(),
        product: "TEST".into(),
    }
}

pub fn target_spec(iqn: &str, groups: Vec<PortalGroupSpec>, backing: BackingSpec) -> TargetSpec {
    TargetSpec {
        iqn: iqn.into(),
        alias: None,
        portal_groups: groups,
        luns: vec![lun_spec(backing)],
        allowed_initiators: Vec::new(),
        chap: None,
        mutual_chap: None,
        alua: AluaMode::Both,
        stpg: Default::default(),
    }
}

/// Portal group `tag` holding `portals`, active/optimized.
pub fn group(tag: u16, portals: &[&str]) -> PortalGroupSpec {
    PortalGroupSpec {
        tag,
        portals: portals.iter().map(|p| p.parse().expect("portal")).collect(),
        state: AluaState::ActiveOptimized,
        preferred: false,
    }
}

/// One target named [`TARGET`], one portal group per portal.
pub fn config(portals: &[&str], backing: BackingSpec) -> ServerConfig {
    let groups = portals
        .iter()
        .enumerate()
        .map(|(i, p)| group(i as u16 + 1, &[p]))
        .collect();
    ServerConfig {
        targets: vec![target_spec(TARGET, groups, backing)],
        ..ServerConfig::default()
    }
}

/// A sparse backing file in `dir`.
pub fn sparse_backing(dir: &std::path::Path) -> BackingSpec {
    BackingSpec::Sparse {
        path: dir.join("lun1.img"),
        size: LUN_BYTES,
        direct: false,
    }
}

// ---- the initiator -----------------------------------------------------------------------

pub fn isid(n: u8) -> Isid {
    Isid([0x80, 0x00, 0x02, 0x3d, 0x00, n])
}

/// A Normal session to [`TARGET`] from [`INITIATOR`] with ISID `isid(n)`, mpath's initiator
/// defaults.
pub fn normal(n: u8) -> InitiatorLoginConfig {
    InitiatorLoginConfig::normal(INITIATOR, TARGET, isid(n))
}

/// How a wait for a PDU ended without one.
#[derive(Debug)]
pub enum NoPdu {
    /// Nothing arrived within the time given; the connection is still open.
    Timeout,
    /// The target closed the connection (FIN).
    Eof,
    /// The target reset the connection (RST).
    Reset,
    Io(std::io::Error),
    Decode(DecodeError),
}

impl NoPdu {
    pub fn is_closed(&self) -> bool {
        matches!(self, NoPdu::Eof | NoPdu::Reset)
    }
}

/// What a SCSI command came back with.
#[derive(Debug, Default)]
pub struct Completion {
    pub status: u8,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
    /// The status-bearing header's O and U flags and residual count.
    pub overflow: bool,
    pub underflow: bool,
    pub residual: u32,
    /// Every Data-In of the command, in arrival order.
    pub data_in: Vec<DataIn>,
    /// The SCSI Response, when the status did not ride in the last Data-In.
    pub response: Option<ScsiResponse>,
    /// R2Ts the target sent for the command.
    pub r2ts: Vec<R2t>,
}

impl Completion {
    pub fn good(&self) -> bool {
        self.status == GOOD
    }

    /// Sense key, ASC and ASCQ, for assertions.
    pub fn sense_triplet(&self) -> Option<(u8, u8, u8)> {
        self.sense.map(|s| (s.key.0, s.asc.code, s.asc.qualifier))
    }
}

/// A logged-in connection.
pub struct Client {
    stream: TcpStream,
    rx: BytesMut,
    pub digests: Digests,
    decode: DecodeConfig,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub login: InitiatorLoginComplete,
    next_itt: u32,
    /// PDUs received while waiting for something else.
    stash: VecDeque<Pdu>,
    /// Answer the target's NOP-In pings while waiting for command completions.
    pub answer_pings: bool,
}

/// Log in on a fresh connection to `portal`.
pub async fn login(portal: SocketAddr, cfg: InitiatorLoginConfig) -> Client {
    try_login(portal, cfg).await.expect("login succeeds")
}

/// Log in; `Err` carries the failure as text (a status the target sent, or a closed socket).
pub async fn try_login(portal: SocketAddr, cfg: InitiatorLoginConfig) -> Result<Client, String> {
    tokio::time::timeout(ANSWER, login_inner(portal, cfg))
        .await
        .map_err(|_| "login did not finish in time".to_string())?
}

async fn login_inner(portal: SocketAddr, cfg: InitiatorLoginConfig) -> Result<Client, String> {
    let mut stream = TcpStream::connect(portal)
        .await
        .map_err(|e| format!("connect {portal}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut login = InitiatorLogin::new(cfg).map_err(|e| e.to_string())?;
    let mut random = |b: &mut [u8]| b.iter_mut().for_each(|x| *x = 0x5a);
    let mut pdu = login.start(&mut random);
    let mut rx = BytesMut::new();
    let decode = DecodeConfig::default();
    loop {
        let mut out = BytesMut::new();
        pdu.encode(Digests::NONE, &mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let resp = loop {
            if let Some(p) = Pdu::decode(&mut rx, &decode).map_err(|e| e.to_string())? {
                break p;
            }
            if stream.read_buf(&mut rx).await.map_err(|e| e.to_string())? == 0 {
                return Err("target closed the connection during login".into());
            }
        };
        match login.handle(resp) {
            InitiatorLoginStep::Send(p) => pdu = p,
            InitiatorLoginStep::Failed(f) => {
                return Err(match f.status {
                    Some(s) => format!("{s:?}: {}", f.reason),
                    None => f.reason,
                })
            }
            InitiatorLoginStep::Complete(c) => {
                let c = *c;
                return Ok(Client {
                    stream,
                    rx,
                    digests: c.connection.digests(),
                    decode: DecodeConfig {
                        digests: c.connection.digests(),
                        max_recv_data_segment_length: c.connection.max_recv_data_segment_length,
                    },
                    // Login PDUs are immediate: the first command carries the login's CmdSN.
                    cmd_sn: c.exp_cmd_sn,
                    exp_stat_sn: c.stat_sn.next(),
                    max_cmd_sn: c.max_cmd_sn,
                    login: c,
                    next_itt: 0x100,
                    stash: VecDeque::new(),
                    answer_pings: true,
                });
            }
        }
    }
}

impl Client {
    /// The target's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub fn max_send(&self) -> u32 {
        self.login.connection.max_send_data_segment_length
    }

    pub fn next_itt(&mut self) -> Itt {
        self.next_itt += 1;
        Itt(self.next_itt)
    }

    /// Take the next CmdSN (for a non-immediate command).
    pub fn take_cmd_sn(&mut self) -> SerialNumber {
        let s = self.cmd_sn;
        self.cmd_sn = s.next();
        s
    }

    /// A SCSI Command header for `cdb` to LUN [`LUN`], consuming a CmdSN.
    pub fn command(
        &mut self,
        itt: Itt,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
    ) -> ScsiCommand {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        ScsiCommand {
            immediate: false,
            final_bit: true,
            read,
            write,
            attr: TaskAttr::SIMPLE,
            lun: Lun::from_number(LUN),
            itt,
            expected_data_transfer_length: edtl,
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            cdb: c,
        }
    }

    pub fn encode(&self, pdu: &Pdu) -> BytesMut {
        let mut out = BytesMut::new();
        pdu.encode(self.digests, &mut out);
        out
    }

    pub async fn send(&mut self, pdu: &Pdu) {
        let out = self.encode(pdu);
        self.send_bytes(&out).await;
    }

    /// Write raw bytes; a connection the target already closed is not an error here (the
    /// test then sees the close when it reads).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    pub async fn try_send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await
    }

    /// The next PDU from the target (stashed ones first), within `within`.
    pub async fn recv(&mut self, within: Duration) -> Result<Pdu, NoPdu> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Pdu::decode(&mut self.rx, &self.decode) {
                Ok(Some(p)) => {
                    self.note(&p);
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => return Err(NoPdu::Decode(e)),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rx)).await {
                Err(_) => return Err(NoPdu::Timeout),
                Ok(Ok(0)) => return Err(NoPdu::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(NoPdu::Reset)
                }
                Ok(Err(e)) => return Err(NoPdu::Io(e)),
            }
        }
    }

    /// The next PDU, which must come within [`ANSWER`].
    pub async fn expect_pdu(&mut self) -> Pdu {
        match self.recv(ANSWER).await {
            Ok(p) => p,
            Err(e) => panic!("expected a PDU from the target, got {e:?}"),
        }
    }

    /// Assert that nothing arrives for [`SILENCE`] and the connection stays open.
    pub async fn expect_silence(&mut self) {
        match self.recv(SILENCE).await {
            Err(NoPdu::Timeout) => {}
            Ok(p) => panic!("expected silence, got {p:?}"),
            Err(e) => panic!("expected silence with the connection open, got {e:?}"),
        }
    }

    /// Read until the target closes the connection (unanswered PDUs before that are
    /// skipped); the way it closed.
    pub async fn expect_closed(&mut self) -> NoPdu {
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(_) => continue,
                Err(NoPdu::Timeout) => panic!("the target did not close the connection"),
                Err(NoPdu::Decode(_)) => {
                    // Whatever follows an undecodable PDU is noise; keep reading raw.
                    self.rx.clear();
                    continue;
                }
                Err(e) => return e,
            }
        }
    }

    /// Track StatSN and the command window from what the target sends.
    fn note(&mut self, p: &Pdu) {
        let (stat_sn, max_cmd_sn) = match &p.bhs {
            Bhs::ScsiResponse(h) => (Some(h.stat_sn), h.max_cmd_sn),
            Bhs::DataIn(h) => (h.status_present.then_some(h.stat_sn), h.max_cmd_sn),
            Bhs::NopIn(h) => ((h.itt != Itt::RESERVED).then_some(h.stat_sn), h.max_cmd_sn),
            Bhs::Reject(h) => (Some(h.stat_sn), h.max_cmd_sn),
            Bhs::TextResponse(h) => (Some(h.stat_sn), h.max_cmd_sn),
            Bhs::TaskMgmtResponse(h) => (Some(h.stat_sn), h.max_cmd_sn),
            Bhs::LogoutResponse(h) => (Some(h.stat_sn), h.max_cmd_sn),
            Bhs::R2t(h) => (None, h.max_cmd_sn),
            _ => return,
        };
        if let Some(s) = stat_sn {
            self.exp_stat_sn = s.next();
        }
        if max_cmd_sn > self.max_cmd_sn {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// Put a PDU back to be received again.
    pub fn unread(&mut self, p: Pdu) {
        self.stash.push_front(p);
    }

    /// Send a command for `cdb` with `data_out` (immediate data and unsolicited Data-Out as
    /// negotiated) and return its ITT; R2Ts are answered by [`Client::finish`].
    pub async fn start(&mut self, cdb: &[u8], data_out: &[u8], read_len: u32) -> Itt {
        let itt = self.next_itt();
        self.start_with(itt, cdb, data_out, read_len).await;
        itt
    }

    pub async fn start_with(&mut self, itt: Itt, cdb: &[u8], data_out: &[u8], read_len: u32) {
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            read_len
        };
        let mut h = self.command(itt, cdb, edtl, read_len > 0, write);
        let s = &self.login.session;
        let first_burst = s.first_burst_length.min(edtl) as usize;
        let immediate = if write && s.immediate_data {
            first_burst.min(self.max_send() as usize)
        } else {
            0
        };
        let unsolicited_end = if write && !s.initial_r2t {
            first_burst
        } else {
            immediate
        };
        h.final_bit = unsolicited_end == immediate;
        let pdu = Pdu::with_data(
            Bhs::ScsiCommand(h),
            Bytes::copy_from_slice(&data_out[..immediate]),
        );
        let mut out = self.encode(&pdu);
        let mut off = immediate;
        let mut data_sn = 0;
        while off < unsolicited_end {
            let end = (off + self.max_send() as usize).min(unsolicited_end);
            let d = DataOut {
                final_bit: end == unsolicited_end,
                lun: Lun::from_number(LUN),
                itt,
                ttt: Ttt::RESERVED,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: SerialNumber(data_sn),
                buffer_offset: off as u32,
            };
            Pdu::with_data(Bhs::DataOut(d), Bytes::copy_from_slice(&data_out[off..end]))
                .encode(self.digests, &mut out);
            data_sn += 1;
            off = end;
        }
        self.send_bytes(&out).await;
    }

    /// Data-Out PDUs answering `r2t`, at most `piece` bytes each.
    pub fn data_out_for(&self, r2t: &R2t, data_out: &[u8], piece: usize) -> BytesMut {
        let mut out = BytesMut::new();
        let start = r2t.buffer_offset as usize;
        let end = start + r2t.desired_data_transfer_length as usize;
        let piece = piece.min(self.max_send() as usize);
        let mut off = start;
        let mut data_sn = 0;
        while off < end {
            let e = (off + piece).min(end);
            let d = DataOut {
                final_bit: e == end,
                lun: r2t.lun,
                itt: r2t.itt,
                ttt: r2t.ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: SerialNumber(data_sn),
                buffer_offset: off as u32,
            };
            Pdu::with_data(Bhs::DataOut(d), Bytes::copy_from_slice(&data_out[off..e]))
                .encode(self.digests, &mut out);
            data_sn += 1;
            off = e;
        }
        out
    }

    /// Collect the answer to `itt`: Data-In, R2Ts answered from `data_out` (in pieces of at
    /// most 8 KiB, so several Data-Out per R2T), and the status. Panics on anything else
    /// for this ITT or on silence; PDUs for other tasks are stashed.
    pub async fn finish(&mut self, itt: Itt, data_out: &[u8]) -> Completion {
        let mut c = Completion::default();
        let mut other = Vec::new();
        let result = loop {
            let p = match self.recv(ANSWER).await {
                Ok(p) => p,
                Err(e) => panic!("waiting for {itt:?}: {e:?}"),
            };
            match &p.bhs {
                Bhs::DataIn(h) if h.itt == itt => {
                    let off = h.buffer_offset as usize;
                    if c.data.len() < off + p.data.len() {
                        c.data.resize(off + p.data.len(), 0);
                    }
                    c.data[off..off + p.data.len()].copy_from_slice(&p.data);
                    c.data_in.push(h.clone());
                    if h.status_present {
                        c.status = h.status;
                        c.overflow = h.overflow;
                        c.underflow = h.underflow;
                        c.residual = h.residual_count;
                        break c;
                    }
                }
                Bhs::ScsiResponse(h) if h.itt == itt => {
                    c.status = h.status;
                    c.overflow = h.overflow;
                    c.underflow = h.underflow;
                    c.residual = h.residual_count;
                    if p.data.len() >= 2 {
                        let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        let s = &p.data[2..(2 + n).min(p.data.len())];
                        c.sense = Some(Sense::decode(s).expect("sense data decodes"));
                    }
                    c.response = Some(h.clone());
                    break c;
                }
                Bhs::R2t(h) if h.itt == itt => {
                    let out = self.data_out_for(h, data_out, 8192);
                    c.r2ts.push(h.clone());
                    self.send_bytes(&out).await;
                }
                Bhs::NopIn(h) if h.ttt != Ttt::RESERVED && self.answer_pings => {
                    let ttt = h.ttt;
                    self.answer_ping(ttt).await;
                }
                _ => other.push(p),
            }
        };
        for p in other.into_iter().rev() {
            self.stash.push_front(p);
        }
        result
    }

    /// Run one command to completion.
    pub async fn execute(&mut self, cdb: &[u8], data_out: &[u8], read_len: u32) -> Completion {
        let itt = self.start(cdb, data_out, read_len).await;
        self.finish(itt, data_out).await
    }

    /// Answer a NOP-In ping.
    pub async fn answer_ping(&mut self, ttt: Ttt) {
        let h = NopOut {
            immediate: true,
            lun: Lun::default(),
            itt: Itt::RESERVED,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Pdu::new(Bhs::NopOut(h))).await;
    }

    /// TEST UNIT READY until GOOD, returning the unit attentions it reported on the way.
    pub async fn clear_unit_attentions(&mut self) -> Vec<(u8, u8, u8)> {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let c = self
                .execute(&scsi::cdb::build::test_unit_ready(), &[], 0)
                .await;
            if c.good() {
                return seen;
            }
            let s = c.sense_triplet().expect("CHECK CONDITION carries sense");
            assert_eq!(s.0, 0x06, "only unit attentions expected, got {s:02x?}");
            seen.push(s);
        }
        panic!("TEST UNIT READY kept failing: {seen:02x?}");
    }

    pub async fn write16(&mut self, lba: u64, data: &[u8]) -> Completion {
        let blocks = data.len() as u32 / BLOCK;
        self.execute(&scsi::cdb::build::write_16(lba, blocks, false), data, 0)
            .await
    }

    pub async fn read16(&mut self, lba: u64, blocks: u32) -> Completion {
        self.execute(
            &scsi::cdb::build::read_16(lba, blocks, false),
            &[],
            blocks * BLOCK,
        )
        .await
    }

    pub async fn read10(&mut self, lba: u32, blocks: u16) -> Completion {
        self.execute(
            &scsi::cdb::build::read_10(lba, blocks, false),
            &[],
            blocks as u32 * BLOCK,
        )
        .await
    }

    pub async fn tur(&mut self) -> Completion {
        self.execute(&scsi::cdb::build::test_unit_ready(), &[], 0)
            .await
    }
}

/// `len` bytes of a pattern that differs per `seed` and per offset.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 101) as u8 ^ (i >> 9) as u8)
        .collect()
}

/// A client logged in with unit attentions cleared, ready for I/O.
pub async fn ready_client(portal: SocketAddr, cfg: InitiatorLoginConfig) -> Client {
    let mut c = login(portal, cfg).await;
    c.clear_unit_attentions().await;
    c
}

/// A READ(10) of `blocks` at `lba` on `c` must return `expect`.
pub async fn assert_reads(c: &mut Client, lba: u32, expect: &[u8]) {
    let r = c.read10(lba, (expect.len() as u32 / BLOCK) as u16).await;
    assert!(r.good(), "READ(10) failed: {:?}", r.sense_triplet());
    assert!(
        r.data == expect,
        "READ(10) at LBA {lba} returned other data"
    );
}

/// A proposal with both digests required.
pub fn with_digests(mut cfg: InitiatorLoginConfig) -> InitiatorLoginConfig {
    cfg.proposal = Proposal {
        header_digest: vec![iscsi_session::Digest::Crc32c],
        data_digest: vec![iscsi_session::Digest::Crc32c],
        ..cfg.proposal
    };
    cfg
}
