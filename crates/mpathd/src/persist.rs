//! Persistent reservations through a map: mpathpersist's job.
//!
//! SCSI-3 persistent reservations belong to I_T nexuses: every path of a map is its own
//! (its own iSCSI session, its own ISID). A host that registers a key must register it on
//! **every** path, or I/O that fails over to an unregistered path meets RESERVATION
//! CONFLICT under a registrants-only reservation. So, as mpathpersist does:
//! - REGISTER / REGISTER AND IGNORE EXISTING KEY go to every path whose session is up; if
//!   the target refuses it on one, the paths that took it are put back (their old key
//!   registered again) and the refusal is the answer. A path that joins the map later is
//!   registered before the map sends it I/O (`Shared::add_path`, before it takes the
//!   membership lock: path I/O never runs under it). A path whose
//!   session logs in again may have lost its registration with its I_T nexus (tgt forgets
//!   it with the session): while a map has a key, such a path is not reinstated by its
//!   transport's recovery but by the checker, which registers the key first — as
//!   multipathd does, at the cost of up to one `checker_interval` before the path is used
//!   again.
//! - RELEASE goes to every path (the holder is one of them; SPC makes a release from
//!   another registrant a no-op); RESERVE, CLEAR, PREEMPT (AND ABORT) and the PR IN
//!   reports go through one path that answers.
//!
//! Use a registrants-only type (`we-ro`, `ea-ro`) or an all-registrants type for a
//! reservation that survives a failover: with `write-exclusive` or `exclusive-access`
//! only the I_T nexus that reserved holds it, and I/O through any other path conflicts.
//!
//! The key a map registered is kept beside the bindings file (`prkeys`, multipath-tools'
//! format): a restarted or upgraded daemon goes on registering it on new paths.

use std::sync::Arc;

use block::{DataPhase, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::IscsiPath;
use scsi::cdb::build;
use scsi::pr::{PrInAction, PrOutAction, PrOutParams, PrType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reply;

/// A reply's data (one of [`reply`]'s types) as JSON.
fn to_data(d: impl serde::Serialize) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}
use tracing::{info, warn};

use crate::daemon::Shared;
use crate::timeline::EventKind;

/// A persistent-reservation request for a map (`mpath persist`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum PersistOp {
    /// PR IN READ KEYS: the registered keys.
    ReadKeys,
    /// PR IN READ RESERVATION: the reservation, if any.
    ReadReservation,
    /// PR IN REPORT CAPABILITIES.
    Capabilities,
    /// Register `key` on every path (`key` 0: unregister). `old`: the key registered now
    /// (`None`: the map's, else 0); `ignore_existing`: REGISTER AND IGNORE EXISTING KEY.
    Register {
        old: Option<u64>,
        key: u64,
        ignore_existing: bool,
        /// Keep registrations across a target power loss (APTPL).
        aptpl: bool,
    },
    /// RESERVE with `key` (`None`: the map's registered key).
    Reserve { key: Option<u64>, pr_type: u8 },
    /// RELEASE on every path.
    Release { key: Option<u64>, pr_type: u8 },
    /// CLEAR: every registration and the reservation go.
    Clear { key: Option<u64> },
    /// PREEMPT (with `abort`: PREEMPT AND ABORT) the registrations of `victim`.
    Preempt {
        key: Option<u64>,
        victim: u64,
        pr_type: u8,
        abort: bool,
    },
}

impl PersistOp {
    /// Whether it changes the LU's reservations (only root or the daemon's user).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            PersistOp::ReadKeys | PersistOp::ReadReservation | PersistOp::Capabilities
        )
    }
}

/// A reservation type by name (`we`, `ea`, `we-ro`, `ea-ro`, `we-ar`, `ea-ar`, the long
/// names, or the SPC number 1, 3, 5, 6, 7, 8).
pub fn parse_type(s: &str) -> Result<u8, String> {
    let t = match s.to_ascii_lowercase().as_str() {
        "1" | "we" | "write-exclusive" => 1,
        "3" | "ea" | "exclusive-access" => 3,
        "5" | "we-ro" | "write-exclusive-registrants-only" => 5,
        "6" | "ea-ro" | "exclusive-access-registrants-only" => 6,
        "7" | "we-ar" | "write-exclusive-all-registrants" => 7,
        "8" | "ea-ar" | "exclusive-access-all-registrants" => 8,
        _ => {
            return Err(format!(
                "{s:?} is not a reservation type (we, ea, we-ro, ea-ro, we-ar, ea-ar or 1, 3, 5, 6, 7, 8)"
            ))
        }
    };
    Ok(t)
}

/// A reservation type for people, as sg_persist names them.
pub fn type_name(t: u8) -> &'static str {
    match t {
        1 => "Write Exclusive",
        3 => "Exclusive Access",
        5 => "Write Exclusive, registrants only",
        6 => "Exclusive Access, registrants only",
        7 => "Write Exclusive, all registrants",
        8 => "Exclusive Access, all registrants",
        _ => "obsolete or reserved type",
    }
}

/// A key as given on a command line: hex with or without `0x`, like mpathpersist.
pub fn parse_key(s: &str) -> Result<u64, String> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(h, 16)
        .map_err(|_| format!("{s:?} is not a reservation key (up to 16 hex digits, 0x optional)"))
}

/// A PERSISTENT RESERVE IN request (8 KiB of answer at most).
pub fn pr_in(action: PrInAction) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(build::persistent_reserve_in(action, 8192).as_bytes()),
        data: DataPhase::In { len: 8192 },
    }
}

/// A PERSISTENT RESERVE OUT request with its parameter list.
pub fn pr_out(action: PrOutAction, pr_type: u8, p: &PrOutParams) -> ScsiRequest {
    let params = p.build();
    ScsiRequest {
        cdb: Bytes::copy_from_slice(
            build::persistent_reserve_out(action, PrType(pr_type), params.len() as u32).as_bytes(),
        ),
        data: DataPhase::Out(Bytes::from(params)),
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// READ KEYS data: the generation and the keys (as many as arrived).
pub fn decode_keys(b: &[u8]) -> Result<(u32, Vec<u64>), String> {
    let generation = be32(b, 0).ok_or("READ KEYS data shorter than its header")?;
    let len = be32(b, 4).ok_or("READ KEYS data shorter than its header")? as usize;
    let end = (8 + len).min(b.len());
    let keys = b[8..end]
        .chunks_exact(8)
        .filter_map(|c| be64(c, 0))
        .collect();
    Ok((generation, keys))
}

/// READ RESERVATION data: the generation and (key, type) of the reservation, if any.
pub fn decode_reservation(b: &[u8]) -> Result<(u32, Option<(u64, u8)>), String> {
    let generation = be32(b, 0).ok_or("READ RESERVATION data shorter than its header")?;
    let len = be32(b, 4).ok_or("READ RESERVATION data shorter than its header")?;
    if len < 16 {
        return Ok((generation, None));
    }
    let key = be64(b, 8).ok_or("READ RESERVATION data cut short")?;
    let scope_type = *b.get(21).ok_or("READ RESERVATION data cut short")?;
    Ok((generation, Some((key, scope_type & 0x0f))))
}

/// One path of a map, for PR commands.
struct Target {
    name: String,
    path: IscsiPath,
}

impl Shared {
    /// Carry out `op` on map `map`: text for people and data for `--json`, or why not.
    pub(crate) async fn persist(
        self: &Arc<Self>,
        map: &str,
        op: PersistOp,
    ) -> Result<(String, Value), String> {
        let (paths, registered) = {
            let st = self.state();
            let Some(m) = st.maps.get(map) else {
                return Err(format!("no map {map}"));
            };
            let paths: Vec<Target> = m
                .paths
                .iter()
                .filter_map(|(_, name)| st.paths.get(name))
                .map(|p| Target {
                    name: p.name.clone(),
                    path: p.path.clone(),
                })
                .collect();
            (paths, m.pr_key)
        };
        let up: Vec<&Target> = paths.iter().filter(|p| p.path.session().is_up()).collect();
        if up.is_empty() {
            return Err(format!(
                "map {map} has no path whose session is up: nothing can carry the command"
            ));
        }
        let key_or = |k: Option<u64>| -> Result<u64, String> {
            k.or(registered).ok_or_else(|| {
                format!("map {map} has registered no key: give one (--key) or register first")
            })
        };
        match op {
            PersistOp::ReadKeys => {
                let (p, data) = first_answer(&up, pr_in(PrInAction::READ_KEYS)).await?;
                let (generation, keys) = decode_keys(&data)?;
                let mut text = format!(
                    "PR generation=0x{generation:x}, {} registered reservation key(s) follow (through {p}):\n",
                    keys.len()
                );
                for k in &keys {
                    text.push_str(&format!("    0x{k:x}\n"));
                }
                Ok((
                    text,
                    to_data(reply::PrKeys {
                        generation,
                        keys: keys.iter().map(|k| format!("0x{k:x}")).collect(),
                    }),
                ))
            }
            PersistOp::ReadReservation => {
                let (p, data) = first_answer(&up, pr_in(PrInAction::READ_RESERVATION)).await?;
                let (generation, r) = decode_reservation(&data)?;
                Ok(match r {
                    None => (
                        format!("PR generation=0x{generation:x}, there is no reservation (through {p})\n"),
                        to_data(reply::PrReservation {
                            generation,
                            reservation: None,
                        }),
                    ),
                    Some((key, t)) => (
                        format!(
                            "PR generation=0x{generation:x}, reservation follows (through {p}):\n    Key = 0x{key:x}\n    scope = LU_SCOPE, type = {}\n",
                            type_name(t)
                        ),
                        to_data(reply::PrReservation {
                            generation,
                            reservation: Some(reply::PrHolder {
                                key: format!("0x{key:x}"),
                                kind: t,
                                type_name: type_name(t).into(),
                            }),
                        }),
                    ),
                })
            }
            PersistOp::Capabilities => {
                let (p, d) = first_answer(&up, pr_in(PrInAction::REPORT_CAPABILITIES)).await?;
                if d.len() < 6 {
                    return Err(format!(
                        "REPORT CAPABILITIES through {p}: {} bytes, want 6",
                        d.len()
                    ));
                }
                let mask = u16::from_be_bytes([d[4], d[5]]);
                let types: Vec<&str> = [
                    (0x8000u16, 7u8),
                    (0x4000, 6),
                    (0x2000, 5),
                    (0x0800, 3),
                    (0x0200, 1),
                    (0x0001, 8),
                ]
                .iter()
                .filter(|(bit, _)| d[3] & 0x80 != 0 && mask & bit != 0)
                .map(|(_, t)| type_name(*t))
                .collect();
                let flags = to_data(reply::PrCapabilities {
                    crh: d[2] & 0x10 != 0,
                    sip_c: d[2] & 0x08 != 0,
                    atp_c: d[2] & 0x04 != 0,
                    ptpl_c: d[2] & 0x01 != 0,
                    ptpl_a: d[3] & 0x01 != 0,
                    types: types.iter().map(|t| t.to_string()).collect(),
                });
                let text = format!(
                    "Report capabilities response (through {p}):\n  Compatible Reservation Handling(CRH): {}\n  Specify Initiator Ports Capable(SIP_C): {}\n  All Target Ports Capable(ATP_C): {}\n  Persist Through Power Loss Capable(PTPL_C): {}\n  Persist Through Power Loss Active(PTPL_A): {}\n  Supported types: {}\n",
                    u8::from(d[2] & 0x10 != 0),
                    u8::from(d[2] & 0x08 != 0),
                    u8::from(d[2] & 0x04 != 0),
                    u8::from(d[2] & 0x01 != 0),
                    u8::from(d[3] & 0x01 != 0),
                    if types.is_empty() { "not reported".to_string() } else { types.join("; ") }
                );
                Ok((text, flags))
            }
            PersistOp::Register {
                old,
                key,
                ignore_existing,
                aptpl,
            } => {
                let old = old.or(registered).unwrap_or(0);
                let action = if ignore_existing {
                    PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY
                } else {
                    PrOutAction::REGISTER
                };
                let params = PrOutParams {
                    reservation_key: if ignore_existing { 0 } else { old },
                    service_action_key: key,
                    aptpl,
                    ..PrOutParams::default()
                };
                let mut done = Vec::new();
                let mut refused = None;
                let mut lines = Vec::new();
                for p in &paths {
                    if !p.path.session().is_up() {
                        lines.push(format!("{}: down, registered when it comes back", p.name));
                        continue;
                    }
                    let first = p.path.command(pr_out(action, 0, &params)).await;
                    // A conflict on a path of ours while the map holds `old`: that I_T
                    // nexus lost its registration (a target that forgets it with the
                    // session); the nexus is ours, so set its key regardless.
                    let conflict = first
                        .as_ref()
                        .err()
                        .and_then(|e| e.scsi.as_ref())
                        .is_some_and(|f| f.status == block::status::RESERVATION_CONFLICT);
                    let r = if conflict && !ignore_existing && registered == Some(old) && old != 0 {
                        let again = PrOutParams {
                            reservation_key: 0,
                            ..params.clone()
                        };
                        p.path
                            .command(pr_out(
                                PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
                                0,
                                &again,
                            ))
                            .await
                            .map(|_| " (its registration had been lost)")
                    } else {
                        first.map(|_| "")
                    };
                    match r {
                        Ok(note) => {
                            done.push(p);
                            let verb = if key == 0 {
                                "unregistered"
                            } else {
                                "registered"
                            };
                            lines.push(format!("{}: {verb}{note}", p.name));
                        }
                        Err(e) => {
                            refused = Some(format!("{}: {e}", p.name));
                            break;
                        }
                    }
                }
                if let Some(why) = refused {
                    // Put back what the other paths took: their old key again.
                    let back = PrOutParams {
                        service_action_key: old,
                        aptpl,
                        ..PrOutParams::default()
                    };
                    for p in done {
                        if let Err(e) = p
                            .path
                            .command(pr_out(
                                PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
                                0,
                                &back,
                            ))
                            .await
                        {
                            warn!(path = %p.name, %map, "cannot put the old registration back: {e}");
                        }
                    }
                    return Err(format!("registration refused, nothing changed: {why}"));
                }
                if done.is_empty() {
                    return Err(format!("map {map}: no path took the registration"));
                }
                self.set_pr_key(map, (key != 0).then_some(key)).await;
                let what = if key == 0 {
                    format!("key 0x{old:x} unregistered")
                } else {
                    format!("key 0x{key:x} registered")
                };
                info!(%map, "{what} on {} path(s)", done.len());
                self.record(
                    Some(map),
                    None,
                    EventKind::PrRegistered,
                    format!("{what} on {} path(s)", done.len()),
                );
                Ok((
                    format!("{what} through map {map}:\n  {}\n", lines.join("\n  ")),
                    to_data(reply::PrRegistered {
                        key: format!("0x{key:x}"),
                        paths: lines,
                    }),
                ))
            }
            PersistOp::Reserve { key, pr_type } => {
                let key = key_or(key)?;
                let p = PrOutParams {
                    reservation_key: key,
                    ..PrOutParams::default()
                };
                let via = first_answer(&up, pr_out(PrOutAction::RESERVE, pr_type, &p))
                    .await?
                    .0;
                let what = format!("reserved with key 0x{key:x}, type {}", type_name(pr_type));
                self.record(Some(map), Some(&via), EventKind::PrReserved, what.clone());
                Ok((
                    format!("{what} (through {via})\n"),
                    to_data(reply::PathDone { path: via }),
                ))
            }
            PersistOp::Release { key, pr_type } => {
                let key = key_or(key)?;
                let p = PrOutParams {
                    reservation_key: key,
                    ..PrOutParams::default()
                };
                let mut ok = 0;
                let mut last = None;
                for t in &up {
                    match t
                        .path
                        .command(pr_out(PrOutAction::RELEASE, pr_type, &p))
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) => last = Some(format!("{}: {e}", t.name)),
                    }
                }
                if ok == 0 {
                    return Err(format!("release refused: {}", last.unwrap_or_default()));
                }
                // A release from a registrant that does not hold the reservation is a
                // no-op: see that it went.
                if let Ok((_, d)) = first_answer(&up, pr_in(PrInAction::READ_RESERVATION)).await {
                    if let Ok((_, Some((held, t)))) = decode_reservation(&d) {
                        if held == key {
                            let down: Vec<&str> = paths
                                .iter()
                                .filter(|p| !p.path.session().is_up())
                                .map(|p| p.name.as_str())
                                .collect();
                            let why = if down.is_empty() {
                                "none of the map's paths is the I_T nexus that reserved it (a target that takes a logged-in-again session for a new nexus, as tgt does, keeps it with the old one); clear or preempt it".to_string()
                            } else {
                                format!("the path that holds it may be one that is down now ({}): release again when it is back, or clear or preempt it", down.join(", "))
                            };
                            return Err(format!(
                                "the reservation (key 0x{key:x}, {}) is still held: {why}",
                                type_name(t)
                            ));
                        }
                    }
                }
                self.record(
                    Some(map),
                    None,
                    EventKind::PrReleased,
                    format!("key 0x{key:x}"),
                );
                Ok((
                    format!("released (key 0x{key:x}) on {ok} path(s)\n"),
                    to_data(reply::PrReleased { paths: ok }),
                ))
            }
            PersistOp::Clear { key } => {
                let key = key_or(key)?;
                let p = PrOutParams {
                    reservation_key: key,
                    ..PrOutParams::default()
                };
                let via = first_answer(&up, pr_out(PrOutAction::CLEAR, 0, &p))
                    .await?
                    .0;
                self.set_pr_key(map, None).await;
                self.record(
                    Some(map),
                    Some(&via),
                    EventKind::PrCleared,
                    format!("key 0x{key:x}"),
                );
                Ok((
                    format!("cleared every registration and the reservation (through {via})\n"),
                    to_data(reply::PathDone { path: via }),
                ))
            }
            PersistOp::Preempt {
                key,
                victim,
                pr_type,
                abort,
            } => {
                let key = key_or(key)?;
                let p = PrOutParams {
                    reservation_key: key,
                    service_action_key: victim,
                    ..PrOutParams::default()
                };
                let action = if abort {
                    PrOutAction::PREEMPT_AND_ABORT
                } else {
                    PrOutAction::PREEMPT
                };
                let via = first_answer(&up, pr_out(action, pr_type, &p)).await?.0;
                let what = format!(
                    "key 0x{victim:x} preempted{} by 0x{key:x}, type {}",
                    if abort { " and its tasks aborted" } else { "" },
                    type_name(pr_type)
                );
                self.record(Some(map), Some(&via), EventKind::PrPreempted, what.clone());
                Ok((
                    format!("{what} (through {via})\n"),
                    to_data(reply::PathDone { path: via }),
                ))
            }
        }
    }

    /// The key map `map` registered, if any.
    pub(crate) fn pr_key(&self, map: &str) -> Option<u64> {
        self.state().maps.get(map).and_then(|m| m.pr_key)
    }

    /// Record the map's key. With a key, a path whose session logs in again waits for the
    /// checker, which registers the key on it before reinstating it; without, the map
    /// reinstates such a path at once.
    async fn set_pr_key(&self, map: &str, key: Option<u64>) {
        let device = {
            let mut st = self.state();
            let Some(m) = st.maps.get_mut(map) else {
                return;
            };
            m.pr_key = key;
            let (device, wwid) = (m.device.clone(), m.wwid.clone());
            if let Err(e) = st.prkeys.set(&wwid, key) {
                warn!(%map, "reservation key file: {e}; the key is kept in memory only");
            }
            device
        };
        if let Err(e) = device.set_reinstate_on_recovery(key.is_none()).await {
            warn!(%map, "cannot change how the map reinstates paths: {e}");
        }
    }

    /// Register the map's key on a path about to carry its I/O (a new path, or one whose
    /// session came back): REGISTER AND IGNORE EXISTING KEY, so it holds whether or not
    /// the target still had it.
    pub(crate) async fn register_path(&self, map: &str, name: &str, path: &IscsiPath) {
        let Some(key) = self.pr_key(map) else {
            return;
        };
        self.register_key(key, map, name, path).await;
    }

    /// Register `key` on `path` (of map `map`, or of the map about to be created).
    pub(crate) async fn register_key(&self, key: u64, map: &str, name: &str, path: &IscsiPath) {
        let p = PrOutParams {
            service_action_key: key,
            ..PrOutParams::default()
        };
        match path
            .command(pr_out(PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY, 0, &p))
            .await
        {
            Ok(_) => {
                info!(path = %name, %map, "key 0x{key:x} registered on the path");
                self.record(
                    Some(map),
                    Some(name),
                    EventKind::PrRegistered,
                    format!("key 0x{key:x} on a path that joined or came back"),
                );
            }
            Err(e) => {
                warn!(path = %name, %map, "cannot register key 0x{key:x}: {e}");
                self.record(
                    Some(map),
                    Some(name),
                    EventKind::PrRegisterFailed,
                    format!("key 0x{key:x}: {e}"),
                );
            }
        }
    }
}

/// The first path (in map order) that answers `req` with success: its name and the data.
/// A target's refusal (a SCSI status) is the answer at once; a transport failure tries
/// the next path.
async fn first_answer(paths: &[&Target], req: ScsiRequest) -> Result<(String, Bytes), String> {
    let mut last = String::new();
    for p in paths {
        match p.path.command(req.clone()).await {
            Ok(d) => return Ok((p.name.clone(), d)),
            Err(e) if e.scsi.is_some() => return Err(format!("{}: {e}", p.name)),
            Err(e) => last = format!("{}: {e}", p.name),
        }
    }
    Err(format!("no path answered: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_types() {
        assert_eq!(parse_key("0x123abc").unwrap(), 0x123abc);
        assert_eq!(parse_key("ABC").unwrap(), 0xabc);
        assert!(parse_key("0xg")
            .unwrap_err()
            .contains("not a reservation key"));
        assert!(parse_key("11112222333344445").is_err());
        assert_eq!(parse_type("we-ro").unwrap(), 5);
        assert_eq!(parse_type("8").unwrap(), 8);
        assert!(parse_type("2").is_err());
    }

    #[test]
    fn decodes_pr_in_data_totally() {
        let mut d = vec![0, 0, 0, 7, 0, 0, 0, 16];
        d.extend_from_slice(&1u64.to_be_bytes());
        d.extend_from_slice(&0xabcu64.to_be_bytes());
        assert_eq!(decode_keys(&d).unwrap(), (7, vec![1, 0xabc]));
        // Cut short: what arrived.
        assert_eq!(decode_keys(&d[..20]).unwrap(), (7, vec![1]));
        assert!(decode_keys(&d[..3]).is_err());
        let mut r = vec![0, 0, 0, 2, 0, 0, 0, 16];
        r.extend_from_slice(&0x55u64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        assert_eq!(decode_reservation(&r).unwrap(), (2, Some((0x55, 5))));
        assert!(decode_reservation(&r[..12]).is_err());
        assert!(decode_reservation(&r[..3]).is_err());
        assert_eq!(
            decode_reservation(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
            (1, None)
        );
    }
}
