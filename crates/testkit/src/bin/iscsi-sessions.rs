//! Log in many iSCSI sessions to one target and hold them open, idle: the load under which
//! `bench/target.sh` measures a target's resident memory.
//!
//! ```text
//! iscsi-sessions [-n N] [--tur] [--lun L] [--initiator IQN] HOST:PORT TARGET-IQN
//! ```
//!
//! Each session is a Normal session on its own TCP connection, with its own ISID (so the
//! target sees N distinct I_T nexuses, not reinstatements of one), driven through
//! `iscsi_session::InitiatorLogin` over a blocking `TcpStream`. With `--tur` each session then
//! sends one TEST UNIT READY to LUN L, which only a session in full feature phase answers with
//! a SCSI Response. Once every session is up the program prints "N sessions up" and sleeps
//! until killed, answering the target's NOP-In pings so that an idle-connection timeout does
//! not close the sessions under the measurement.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use iscsi_pdu::{
    Bhs, DecodeConfig, Digests, Isid, Itt, Lun, NopOut, Pdu, ScsiCommand, ScsiResponseCode,
    SerialNumber, TaskAttr, Ttt,
};
use iscsi_session::{InitiatorLogin, InitiatorLoginConfig, InitiatorLoginStep};

/// How long a login or a TEST UNIT READY may wait for each response. Loopback targets answer
/// in microseconds; a second-scale bound only catches a target that stopped answering.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often idle sessions are checked for NOP-In pings and closed connections. Targets ping
/// after several seconds of silence (mpath: 10 s) and wait as long for the answer.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// SCSI status GOOD and CHECK CONDITION (SAM-5 §5.3.1).
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("iscsi-sessions: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iscsi-sessions: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str =
    "usage: iscsi-sessions [-n N] [--tur] [--lun L] [--initiator IQN] HOST:PORT TARGET-IQN";

struct Args {
    sessions: u16,
    tur: bool,
    lun: u16,
    initiator: String,
    portal: SocketAddr,
    target: String,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut sessions = 256u16;
        let mut tur = false;
        let mut lun = 1u16;
        let mut initiator = "iqn.2026-01.io.mpath:iscsi-sessions".to_string();
        let mut positional = Vec::new();
        while let Some(a) = it.next() {
            let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
            match a.as_str() {
                "-n" | "--sessions" => {
                    let v = value(&a)?;
                    sessions = v.parse().map_err(|_| format!("{a} {v}: not a count"))?;
                }
                "--lun" => {
                    let v = value(&a)?;
                    lun = v.parse().map_err(|_| format!("--lun {v}: not a LUN"))?;
                }
                "--initiator" => initiator = value(&a)?,
                "--tur" => tur = true,
                "-h" | "--help" => return Err("help".into()),
                _ if a.starts_with('-') => return Err(format!("unknown option {a}")),
                _ => positional.push(a),
            }
        }
        let [portal, target]: [String; 2] = positional
            .try_into()
            .map_err(|_| "give HOST:PORT and TARGET-IQN".to_string())?;
        let portal = portal
            .to_socket_addrs()
            .map_err(|e| format!("{portal}: {e}"))?
            .next()
            .ok_or(format!("{portal}: no address"))?;
        Ok(Args {
            sessions,
            tur,
            lun,
            initiator,
            portal,
            target,
        })
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mut sessions = Vec::with_capacity(args.sessions as usize);
    let (mut good, mut check) = (0u32, 0u32);
    for i in 0..args.sessions {
        let mut s = Session::login(args, i).map_err(|e| format!("session {i}: {e}"))?;
        if args.tur {
            match s
                .test_unit_ready(Lun::from_number(args.lun))
                .map_err(|e| format!("session {i}: TEST UNIT READY: {e}"))?
            {
                GOOD => good += 1,
                // A new I_T nexus may first see a UNIT ATTENTION (power on / reset): still a
                // SCSI Response, so the session is in full feature phase.
                CHECK_CONDITION => check += 1,
                other => return Err(format!("session {i}: TEST UNIT READY status {other:#04x}")),
            }
        }
        s.stream
            .set_nonblocking(true)
            .map_err(|e| format!("session {i}: {e}"))?;
        sessions.push(Some(s));
    }
    if args.tur {
        println!(
            "TEST UNIT READY on LUN {}: {good} GOOD, {check} CHECK CONDITION",
            args.lun
        );
    }
    println!("{} sessions up", sessions.len());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(POLL_INTERVAL);
        for (i, slot) in sessions.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if let Err(e) = s.poll_idle() {
                eprintln!("iscsi-sessions: session {i} lost: {e}");
                *slot = None;
            }
        }
    }
}

/// One logged-in session on one connection.
struct Session {
    stream: TcpStream,
    rx: BytesMut,
    decode: DecodeConfig,
    digests: Digests,
    /// CmdSN of the next non-immediate command.
    cmd_sn: SerialNumber,
    exp_stat_sn: SerialNumber,
    next_itt: u32,
}

impl Session {
    fn login(args: &Args, index: u16) -> Result<Session, String> {
        let stream = TcpStream::connect(args.portal).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        // ISID type 10b (random, RFC 7143 §11.12.5): the process id keeps two concurrent
        // runs apart, the index keeps this run's sessions apart.
        let pid = std::process::id();
        let isid = Isid([
            0x80,
            (pid >> 8) as u8,
            pid as u8,
            0x00,
            (index >> 8) as u8,
            index as u8,
        ]);
        let mut config = InitiatorLoginConfig::normal(&args.initiator, &args.target, isid);
        config.itt = Itt(0);
        config.cmd_sn = SerialNumber(1);
        let mut login = InitiatorLogin::new(config).map_err(|e| e.to_string())?;
        let mut s = Session {
            stream,
            rx: BytesMut::with_capacity(512),
            decode: DecodeConfig::default(),
            digests: Digests::NONE,
            cmd_sn: SerialNumber(1),
            exp_stat_sn: SerialNumber(0),
            next_itt: 1,
        };
        // No CHAP: the random source is never consulted.
        let mut req = login.start(&mut |b: &mut [u8]| b.fill(0));
        loop {
            s.send(&req)?;
            let resp = s.recv()?;
            match login.handle(resp) {
                InitiatorLoginStep::Send(p) => req = p,
                InitiatorLoginStep::Complete(c) => {
                    s.digests = c.connection.digests();
                    s.decode = DecodeConfig {
                        digests: s.digests,
                        max_recv_data_segment_length: c.connection.max_recv_data_segment_length,
                    };
                    s.cmd_sn = c.exp_cmd_sn;
                    s.exp_stat_sn = c.stat_sn.next();
                    return Ok(s);
                }
                InitiatorLoginStep::Failed(f) => {
                    return Err(match f.status {
                        Some(st) => format!("login refused ({st:?}): {f}"),
                        None => format!("login failed: {f}"),
                    })
                }
            }
        }
    }

    /// Send TEST UNIT READY and wait for its SCSI Response; returns the SCSI status.
    fn test_unit_ready(&mut self, lun: Lun) -> Result<u8, String> {
        let itt = Itt(self.next_itt);
        self.next_itt += 1;
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: false,
            write: false,
            attr: TaskAttr::SIMPLE,
            lun,
            itt,
            expected_data_transfer_length: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            // TEST UNIT READY (SPC-4 §6.47): opcode 0x00, all fields zero.
            cdb: [0; 16],
        };
        self.cmd_sn = self.cmd_sn.next();
        self.send(&Pdu::new(Bhs::ScsiCommand(cmd)))?;
        loop {
            let pdu = self.recv()?;
            match pdu.bhs {
                Bhs::ScsiResponse(r) if r.itt == itt => {
                    self.exp_stat_sn = r.stat_sn.next();
                    if r.response != ScsiResponseCode::COMPLETED {
                        return Err(format!("iSCSI response {:?}", r.response));
                    }
                    return Ok(r.status);
                }
                other => self.on_unsolicited(other)?,
            }
        }
    }

    /// Without blocking: answer whatever the target sent while the session sat idle.
    fn poll_idle(&mut self) -> Result<(), String> {
        loop {
            if let Some(pdu) = self.take_pdu()? {
                self.on_unsolicited(pdu.bhs)?;
                continue;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the target".into()),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A PDU that answers nothing we asked: NOP-In pings get their NOP-Out, the rest is
    /// reported.
    fn on_unsolicited(&mut self, bhs: Bhs) -> Result<(), String> {
        match bhs {
            Bhs::NopIn(n) if n.ttt != Ttt::RESERVED => {
                // A ping (RFC 7143 §11.19.1): answer with an immediate NOP-Out carrying its
                // TTT and the reserved ITT. Its StatSN is the next one, not consumed.
                let out = NopOut {
                    immediate: true,
                    lun: n.lun,
                    itt: Itt::RESERVED,
                    ttt: n.ttt,
                    cmd_sn: self.cmd_sn,
                    exp_stat_sn: self.exp_stat_sn,
                };
                self.send_blocking(&Pdu::new(Bhs::NopOut(out)))
            }
            Bhs::NopIn(_) => Ok(()),
            Bhs::AsyncMessage(m) => Err(format!("target sent an Async Message: {m:?}")),
            other => Err(format!("unexpected {}", other.opcode())),
        }
    }

    fn send(&mut self, pdu: &Pdu) -> Result<(), String> {
        let mut out = BytesMut::new();
        pdu.encode(self.digests, &mut out);
        self.stream.write_all(&out).map_err(|e| e.to_string())
    }

    /// Send on a connection switched to non-blocking: a NOP-Out fits an empty socket buffer,
    /// but go through blocking mode rather than handle a partial write.
    fn send_blocking(&mut self, pdu: &Pdu) -> Result<(), String> {
        self.stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        let sent = self.send(pdu);
        self.stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        sent
    }

    /// Block (up to the read timeout) for the next PDU.
    fn recv(&mut self) -> Result<Pdu, String> {
        loop {
            if let Some(pdu) = self.take_pdu()? {
                return Ok(pdu);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the target".into()),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("no response within {RESPONSE_TIMEOUT:?}"))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn take_pdu(&mut self) -> Result<Option<Pdu>, String> {
        Pdu::decode(&mut self.rx, &self.decode).map_err(|e| e.to_string())
    }
}
