//! The control socket: one JSON request per line, one JSON response per line, over a unix
//! socket. [`CtlRequest`] is the whole command set; the server only forwards each request
//! to [`crate::Control`] and writes back what it returns.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::AluaState;
use crate::faults::Fault;

/// A control command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum CtlRequest {
    /// Targets, portals with their faults, LUNs with their state.
    Status,
    /// Logged-in sessions.
    Sessions,
    /// Change the ALUA state of a target port group (an implicit transition: initiators get
    /// a UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED).
    SetAlua {
        target: String,
        group: u16,
        state: AluaState,
    },
    /// Take a LUN offline (TEST UNIT READY and I/O fail with NOT READY) or back online.
    SetLunOnline {
        target: String,
        lun: u16,
        online: bool,
    },
    /// Make every READ of a LUN fail with MEDIUM ERROR while TEST UNIT READY passes (or
    /// stop).
    SetLunReadErrors { target: String, lun: u16, on: bool },
    /// Answer every command to a LUN with status BUSY (or stop).
    SetLunBusy { target: String, lun: u16, on: bool },
    /// Read the LUN's backing store's size again (after an operator grew or shrank the
    /// file); a changed capacity is announced to every initiator (UNIT ATTENTION 2A/09).
    RescanLun { target: String, lun: u16 },
    /// Set the fault mode of a portal (`None` clears).
    SetFault { portal: SocketAddr, fault: Fault },
    /// Close every connection of a portal with a TCP RST.
    ResetPortal { portal: SocketAddr },
}

/// The answer to a [`CtlRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CtlResponse {
    Ok,
    Error { message: String },
    Status(StatusInfo),
    Sessions { sessions: Vec<SessionInfo> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub targets: Vec<TargetInfo>,
    pub portals: Vec<PortalInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub iqn: String,
    /// ALUA management offered: none, implicit, explicit or both.
    #[serde(default)]
    pub alua: String,
    /// What SET TARGET PORT GROUPS does to the groups it does not name.
    #[serde(default)]
    pub stpg: String,
    pub portal_groups: Vec<PortalGroupInfo>,
    pub luns: Vec<LunInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalGroupInfo {
    pub tag: u16,
    pub portals: Vec<SocketAddr>,
    pub state: AluaState,
    pub preferred: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LunInfo {
    pub id: u16,
    pub backing: String,
    pub size: u64,
    pub block_size: u32,
    pub online: bool,
    pub wwid: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalInfo {
    pub portal: SocketAddr,
    pub fault: Fault,
    pub connections: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub initiator: String,
    pub isid: String,
    pub tsih: u16,
    pub target: String,
    pub discovery: bool,
    pub portal: SocketAddr,
    pub peer: SocketAddr,
    pub header_digest: bool,
    pub data_digest: bool,
    pub outstanding_tasks: usize,
    pub connected_for_ms: u64,
}

/// Serve the control socket at `path` until the task is dropped.
pub async fn serve(path: &Path, control: crate::Control) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, control).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, control: crate::Control) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<CtlRequest>(&line) {
            Ok(req) => control.handle(req),
            Err(e) => CtlResponse::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Send one request to the control socket at `path`.
pub async fn call(path: &Path, req: &CtlRequest) -> std::io::Result<CtlResponse> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach the target's control socket {}: {e}",
                path.display()
            ),
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut out = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut lines = BufReader::new(r).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::other("control socket closed without answering"))?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = CtlRequest::SetFault {
            portal: "127.0.0.2:3260".parse().unwrap(),
            fault: Fault::Delay { ms: 20 },
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"cmd":"set-fault","portal":"127.0.0.2:3260","fault":{"fault":"delay","ms":20}}"#
        );
        assert_eq!(serde_json::from_str::<CtlRequest>(&j).unwrap(), r);
        let a: CtlRequest = serde_json::from_str(
            r#"{"cmd":"set-alua","target":"iqn.x:y","group":2,"state":"standby"}"#,
        )
        .unwrap();
        assert!(matches!(
            a,
            CtlRequest::SetAlua {
                group: 2,
                state: AluaState::Standby,
                ..
            }
        ));
    }
}
