//! Opening a connection: TCP connect and the login exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iscsi_pdu::{DecodeConfig, Digests, Pdu};
use iscsi_session::login::{
    InitiatorLogin, InitiatorLoginComplete, InitiatorLoginConfig, InitiatorLoginStep, LoginFailure,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot connect to {portal}: {source}")]
    Connect {
        portal: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {portal} timed out after {after:?}")]
    ConnectTimeout { portal: SocketAddr, after: Duration },
    #[error("login to {portal} timed out after {after:?}")]
    LoginTimeout { portal: SocketAddr, after: Duration },
    #[error("login to {portal} refused: {failure}")]
    Refused {
        portal: SocketAddr,
        failure: LoginFailure,
    },
    #[error("login to {portal}: {message}")]
    Protocol { portal: SocketAddr, message: String },
    #[error("login to {portal}: connection lost: {source}")]
    Io {
        portal: SocketAddr,
        source: std::io::Error,
    },
}

impl LoginError {
    /// The reason as a path failure, for events.
    pub fn as_reason(&self) -> block::PathFailReason {
        use block::PathFailKind as K;
        let kind = match self {
            LoginError::Refused { .. } | LoginError::Protocol { .. } => K::LoginFailed,
            LoginError::LoginTimeout { .. } => K::LoginFailed,
            LoginError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                K::ConnectionReset
            }
            _ => K::SocketError,
        };
        block::PathFailReason::new(kind, self.to_string())
    }
}

/// A logged-in connection, ready for full feature phase.
pub(crate) struct Established {
    pub stream: TcpStream,
    /// Bytes read past the final Login Response (a target may pipeline a NOP-In).
    pub leftover: BytesMut,
    pub complete: InitiatorLoginComplete,
    /// CmdSN of the login: the first command carries it.
    pub cmd_sn: iscsi_pdu::SerialNumber,
    /// The shortest round trip of the login's exchanges: seeds the stall detector's
    /// estimate. The shortest, because an exchange can wait far longer than the network
    /// takes — a login sent to a portal that was silent is answered only when it resumes —
    /// and a seed that large would slow failure detection for as long as no idle ping
    /// refines it, which under steady load is the connection's whole life.
    pub login_rtt: Duration,
}

/// Connect to `portal` and log in.
pub(crate) async fn establish(
    portal: SocketAddr,
    cfg: InitiatorLoginConfig,
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<Established, LoginError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(portal)).await {
        Err(_) => {
            return Err(LoginError::ConnectTimeout {
                portal,
                after: connect_timeout,
            })
        }
        Ok(Err(source)) => return Err(LoginError::Connect { portal, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(login_timeout, login(portal, stream, cfg)).await {
        Err(_) => Err(LoginError::LoginTimeout {
            portal,
            after: login_timeout,
        }),
        Ok(r) => r,
    }
}

async fn login(
    portal: SocketAddr,
    mut stream: TcpStream,
    cfg: InitiatorLoginConfig,
) -> Result<Established, LoginError> {
    let cmd_sn = cfg.cmd_sn;
    let mut login = InitiatorLogin::new(cfg).map_err(|e| LoginError::Protocol {
        portal,
        message: e.to_string(),
    })?;
    let io = |source| LoginError::Io { portal, source };
    let mut random = |b: &mut [u8]| {
        if getrandom::getrandom(b).is_err() {
            b.fill(0x5a);
        }
    };
    let first = login.start(&mut random);
    send(&mut stream, &first).await.map_err(io)?;
    let mut sent = Instant::now();
    let mut login_rtt: Option<Duration> = None;
    let mut buf = BytesMut::with_capacity(16 << 10);
    let decode = DecodeConfig::default();
    loop {
        let pdu = loop {
            match Pdu::decode(&mut buf, &decode) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    return Err(LoginError::Protocol {
                        portal,
                        message: format!("undecodable Login Response: {e}"),
                    })
                }
            }
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(LoginError::Io {
                    portal,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the target closed the connection during login",
                    ),
                });
            }
        };
        let rtt = sent.elapsed();
        login_rtt = Some(login_rtt.map_or(rtt, |r| r.min(rtt)));
        match login.handle(pdu) {
            InitiatorLoginStep::Send(p) => {
                send(&mut stream, &p).await.map_err(io)?;
                sent = Instant::now();
            }
            InitiatorLoginStep::Complete(c) => {
                return Ok(Established {
                    stream,
                    leftover: buf,
                    complete: *c,
                    cmd_sn,
                    login_rtt: login_rtt.unwrap_or_default(),
                })
            }
            InitiatorLoginStep::Failed(failure) => {
                return Err(LoginError::Refused { portal, failure });
            }
        }
    }
}

async fn send(stream: &mut TcpStream, pdu: &Pdu) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    pdu.encode(Digests::NONE, &mut out);
    stream.write_all(&out).await
}
