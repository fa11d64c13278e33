//! Discovery: a SendTargets exchange in a discovery session.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use iscsi_pdu::*;
use iscsi_session::login::InitiatorLoginConfig;
use iscsi_session::ChapCredentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::random_isid;
use crate::connect::{establish, LoginError};

/// A target and the portals it is reachable through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<DiscoveredPortal>,
}

/// One `TargetAddress`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredPortal {
    /// The address as the target wrote it (`ip:port`, `[v6]:port` or a host name).
    pub address: String,
    /// Parsed when it is an IP address.
    pub socket: Option<SocketAddr>,
    pub tpgt: u16,
}

/// Options of a discovery.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub initiator_name: String,
    pub chap: Option<ChapCredentials>,
    pub timeout: std::time::Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            initiator_name: crate::config::default_initiator_name(),
            chap: None,
            timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Ask the portal for every target it offers (`SendTargets=All`).
pub async fn discover(
    portal: SocketAddr,
    cfg: &DiscoveryConfig,
) -> Result<Vec<DiscoveredTarget>, LoginError> {
    let mut login = InitiatorLoginConfig::discovery(&cfg.initiator_name, random_isid());
    login.chap = cfg.chap.clone();
    let est = establish(portal, login, cfg.timeout, cfg.timeout).await?;
    let proto = |message: String| LoginError::Protocol { portal, message };
    let io = |source| LoginError::Io { portal, source };
    let mut stream = est.stream;
    let mut buf = est.leftover;
    let mut cmd_sn = est.cmd_sn;
    let mut exp_stat_sn = est.complete.stat_sn.next();
    let decode = DecodeConfig {
        digests: est.complete.connection.digests(),
        max_recv_data_segment_length: est.complete.connection.max_recv_data_segment_length,
    };
    let digests = est.complete.connection.digests();
    let itt = Itt(0x100);
    let mut text = Vec::new();
    let mut ttt = Ttt::RESERVED;
    let mut first = true;
    // A long answer comes in several Text Responses (C bit); each is fetched with an empty
    // Text Request echoing its TTT.
    for _ in 0..1024 {
        let req = TextRequest {
            immediate: false,
            final_bit: true,
            continue_bit: false,
            lun: Lun::default(),
            itt,
            ttt,
            cmd_sn,
            exp_stat_sn,
        };
        cmd_sn = cmd_sn.next();
        let data: &[u8] = if first { b"SendTargets=All\0" } else { b"" };
        first = false;
        let mut out = BytesMut::new();
        Pdu::with_data(Bhs::TextRequest(req), data.to_vec()).encode(digests, &mut out);
        stream.write_all(&out).await.map_err(io)?;
        let resp = loop {
            match Pdu::decode(&mut buf, &decode) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => return Err(proto(format!("undecodable Text Response: {e}"))),
            }
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(proto("connection closed during SendTargets".into()));
            }
        };
        let Bhs::TextResponse(h) = &resp.bhs else {
            return Err(proto(format!(
                "expected a Text Response, got {}",
                resp.opcode()
            )));
        };
        exp_stat_sn = h.stat_sn.next();
        text.extend_from_slice(&resp.data);
        if h.final_bit || !h.continue_bit {
            break;
        }
        ttt = h.ttt;
    }
    // Log out politely; a target that just closes is fine too.
    let logout = LogoutRequest {
        immediate: true,
        reason: LogoutReason::CLOSE_SESSION,
        itt: Itt(0x101),
        cid: Cid(0),
        cmd_sn,
        exp_stat_sn,
    };
    let mut out = BytesMut::new();
    Pdu::new(Bhs::LogoutRequest(logout)).encode(digests, &mut out);
    if stream.write_all(&out).await.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.read_buf(&mut buf))
            .await;
    }
    let params =
        TextParams::decode(&text).map_err(|e| proto(format!("SendTargets answer: {e}")))?;
    Ok(parse_send_targets(&params, portal))
}

/// Turn `TargetName`/`TargetAddress` pairs into targets. A target with no address is
/// reachable through the portal that was asked (RFC 7143 §13.3).
pub fn parse_send_targets(p: &TextParams, asked: SocketAddr) -> Vec<DiscoveredTarget> {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in p.iter() {
        match k {
            "TargetName" => out.push(DiscoveredTarget {
                name: v.to_string(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(t) = out.last_mut() {
                    t.portals.push(parse_target_address(v));
                }
            }
            _ => {}
        }
    }
    for t in &mut out {
        if t.portals.is_empty() {
            t.portals.push(DiscoveredPortal {
                address: asked.to_string(),
                socket: Some(asked),
                tpgt: 1,
            });
        }
    }
    out
}

/// `host[:port][,tpgt]`, with IPv6 in brackets.
pub fn parse_target_address(v: &str) -> DiscoveredPortal {
    let (addr, tpgt) = match v.rsplit_once(',') {
        Some((a, t)) => (a, t.trim().parse().unwrap_or(1)),
        None => (v, 1),
    };
    let socket = addr.parse::<SocketAddr>().ok().or_else(|| {
        addr.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 3260))
    });
    DiscoveredPortal {
        address: addr.to_string(),
        socket,
        tpgt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let p = parse_target_address("127.0.0.2:3261,2");
        assert_eq!(
            (p.socket, p.tpgt),
            (Some("127.0.0.2:3261".parse().unwrap()), 2)
        );
        let p = parse_target_address("[::1]:3260,1");
        assert_eq!(p.socket, Some("[::1]:3260".parse().unwrap()));
        let p = parse_target_address("10.0.0.1");
        assert_eq!((p.socket.unwrap().port(), p.tpgt), (3260, 1));
        let p = parse_target_address("array.example:3260,7");
        assert_eq!(
            (p.socket, p.tpgt, p.address.as_str()),
            (None, 7, "array.example:3260")
        );
    }

    #[test]
    fn send_targets_pairs() {
        let mut t = TextParams::new();
        t.push("TargetName", "iqn.a");
        t.push("TargetAddress", "127.0.0.2:3260,1");
        t.push("TargetAddress", "127.0.0.3:3260,2");
        t.push("TargetName", "iqn.b");
        let got = parse_send_targets(&t, "127.0.0.9:3260".parse().unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].portals.len(), 2);
        assert_eq!(got[1].portals[0].address, "127.0.0.9:3260");
    }
}
