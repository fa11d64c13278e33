//! Persistent reservations (SPC-4 5.15) and the SPC-2 RESERVE/RELEASE they
//! coexist with (SPC-3 5.6.3, reported as CRH=1).
//!
//! The state lives inside the LU's state mutex; every function here is
//! synchronous and pure over it. Unit attentions to establish are returned
//! as [`UaTarget`]s for the LU to deliver to matching I_T nexuses.

use crate::cdb::{AccessClass, CommandType};
use crate::error::ParamError;
use crate::pr::{
    Capabilities, FullStatus, FullStatusDescriptor, PrInAction, PrOutAction, PrOutParams, PrType,
    ReadKeys, ReadReservation, RegisterAndMoveParams, ReservationInfo, TransportId,
};
use crate::sense::{self, Asc, Sense};

/// The only scope SPC-4 still defines: the whole logical unit.
const SCOPE_LU: u8 = 0;

/// Identity of an I_T nexus: initiator port name and relative target port.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct ItNexus<'a> {
    pub port: &'a str,
    pub rtp: u16,
}

/// Which initiator ports a registration applies to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum PortMatch {
    /// One initiator port (`name,i,0x<isid>`).
    Exact(String),
    /// Every port of an initiator (a name-only TransportID).
    Name(String),
}

impl PortMatch {
    fn matches(&self, port: &str) -> bool {
        match self {
            PortMatch::Exact(p) => p == port,
            PortMatch::Name(n) => match crate::pr::split_initiator_port(port) {
                Some((name, _)) => name == n,
                None => port == n,
            },
        }
    }

    fn from_transport_id(t: &TransportId) -> Option<PortMatch> {
        match t {
            TransportId::Iscsi { name, .. } => Some(match t.initiator_port() {
                Some(port) => PortMatch::Exact(port),
                None => PortMatch::Name(name.clone()),
            }),
            TransportId::Other { .. } => None,
        }
    }
}

/// Which I_T nexuses a unit attention goes to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct UaTarget {
    pub port: PortMatch,
    /// `None`: every target port.
    pub rtp: Option<u16>,
    pub asc: Asc,
}

impl UaTarget {
    pub fn matches(&self, port: &str, rtp: u16) -> bool {
        self.port.matches(port) && self.rtp.is_none_or(|r| r == rtp)
    }
}

#[derive(Clone, Debug)]
struct Registration {
    /// Unique for the LU's lifetime; a reservation names its holder by it.
    id: u64,
    port: PortMatch,
    /// `None` when registered with ALL_TG_PT.
    rtp: Option<u16>,
    key: u64,
    transport_id: TransportId,
}

impl Registration {
    fn matches(&self, n: &ItNexus<'_>) -> bool {
        self.port.matches(n.port) && self.rtp.is_none_or(|r| r == n.rtp)
    }

    fn ua(&self, asc: Asc) -> UaTarget {
        UaTarget {
            port: self.port.clone(),
            rtp: self.rtp,
            asc,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Reservation {
    /// Registration id of the holder; unused for all-registrants types.
    holder: u64,
    pr_type: PrType,
    scope: u8,
}

/// The outcome of a reservation command that did not fail with sense.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PrStatus {
    Good,
    Conflict,
}

#[derive(Debug, Default)]
pub(crate) struct PrState {
    /// PRGENERATION: bumped by every PR OUT that changes registrations.
    generation: u32,
    next_id: u64,
    registrations: Vec<Registration>,
    reservation: Option<Reservation>,
    /// SPC-2 RESERVE holder (initiator port, relative target port).
    spc2_holder: Option<(String, u16)>,
}

impl PrState {
    fn find(&self, n: &ItNexus<'_>) -> Option<usize> {
        self.registrations.iter().position(|r| r.matches(n))
    }

    fn holder_is(&self, r: &Reservation, reg_index: usize) -> bool {
        r.pr_type.is_all_registrants() || self.registrations[reg_index].id == r.holder
    }

    /// Anything that can make a command conflict: the fast path skips the
    /// access checks when this is false.
    pub fn any_reservation(&self) -> bool {
        self.reservation.is_some() || self.spc2_holder.is_some()
    }

    /// Would `ty` from nexus `n` conflict with a reservation? (SPC-4 table
    /// 63, SBC-3 table 13 for persistent reservations; SPC-2 5.5.1 and
    /// SPC-3 5.6.3 for RESERVE.)
    pub fn conflicts(&self, n: &ItNexus<'_>, ty: CommandType) -> bool {
        if let Some((port, rtp)) = &self.spc2_holder {
            let holder = port == n.port && *rtp == n.rtp;
            if matches!(
                ty,
                CommandType::PersistentReserveIn(_) | CommandType::PersistentReserveOut(_)
            ) {
                // SPC-3 5.6.3: under RESERVE, all PR commands conflict,
                // whoever sends them.
                return true;
            }
            let exempt = matches!(
                ty,
                CommandType::Inquiry
                    | CommandType::ReportLuns
                    | CommandType::RequestSense
                    | CommandType::Release6
                    | CommandType::Release10
                    | CommandType::ReportTargetPortGroups
                    | CommandType::ReportSupportedOperationCodes
            );
            if !holder && !exempt {
                return true;
            }
        }
        let Some(r) = self.reservation else {
            return false;
        };
        let class = ty.access_class();
        if class == AccessClass::Unrestricted {
            return false;
        }
        let reg = self.find(n);
        if let Some(i) = reg {
            if self.holder_is(&r, i) {
                return false;
            }
        }
        let registered = reg.is_some();
        match r.pr_type {
            PrType::WRITE_EXCLUSIVE => class == AccessClass::Write,
            PrType::EXCLUSIVE_ACCESS => true,
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY | PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS => {
                class == AccessClass::Write && !registered
            }
            PrType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
            | PrType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS => !registered,
            _ => false,
        }
    }

    /// RESERVE(6)/(10).
    pub fn spc2_reserve(&mut self, n: &ItNexus<'_>) -> PrStatus {
        // SPC-3 5.6.3: with any registration or persistent reservation,
        // RESERVE conflicts.
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return PrStatus::Conflict;
        }
        match &self.spc2_holder {
            Some((p, r)) if p != n.port || *r != n.rtp => PrStatus::Conflict,
            _ => {
                self.spc2_holder = Some((n.port.to_string(), n.rtp));
                PrStatus::Good
            }
        }
    }

    /// RELEASE(6)/(10): releasing a reservation one does not hold, or any
    /// RELEASE while registrations exist, is a successful no-op.
    pub fn spc2_release(&mut self, n: &ItNexus<'_>) {
        if let Some((p, r)) = &self.spc2_holder {
            if p == n.port && *r == n.rtp {
                self.spc2_holder = None;
            }
        }
    }

    /// Logical unit reset or I_T nexus loss releases SPC-2 reservations
    /// (of `n` only, for nexus loss); persistent reservations persist.
    pub fn spc2_reset(&mut self, n: Option<&ItNexus<'_>>) {
        match n {
            None => self.spc2_holder = None,
            Some(n) => self.spc2_release(n),
        }
    }

    /// PERSISTENT RESERVE IN data.
    pub fn read(&self, action: PrInAction) -> Vec<u8> {
        match action {
            PrInAction::READ_KEYS => ReadKeys {
                generation: self.generation,
                keys: self.registrations.iter().map(|r| r.key).collect(),
            }
            .build(),
            PrInAction::READ_RESERVATION => ReadReservation {
                generation: self.generation,
                reservation: self.reservation.map(|r| ReservationInfo {
                    key: if r.pr_type.is_all_registrants() {
                        0
                    } else {
                        self.registrations
                            .iter()
                            .find(|g| g.id == r.holder)
                            .map_or(0, |g| g.key)
                    },
                    scope: r.scope,
                    pr_type: r.pr_type,
                }),
            }
            .build(),
            PrInAction::REPORT_CAPABILITIES => Capabilities {
                crh: true,
                sip_c: true,
                atp_c: true,
                ptpl_c: false,
                tmv: true,
                allow_commands: 0,
                ptpl_a: false,
                type_mask: [
                    PrType::WRITE_EXCLUSIVE,
                    PrType::EXCLUSIVE_ACCESS,
                    PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                    PrType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                    PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                    PrType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
                ]
                .iter()
                .fold(0, |m, t| m | t.type_mask_bit()),
            }
            .build(),
            _ => FullStatus {
                generation: self.generation,
                descriptors: self
                    .registrations
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let holder = self.reservation.is_some_and(|r| self.holder_is(&r, i));
                        let r = self.reservation.filter(|_| holder);
                        FullStatusDescriptor {
                            key: g.key,
                            all_tg_pt: g.rtp.is_none(),
                            holder,
                            scope: r.map_or(0, |r| r.scope),
                            pr_type: r.map_or(PrType(0), |r| r.pr_type),
                            relative_target_port: g.rtp.unwrap_or(0),
                            transport_id: g.transport_id.clone(),
                        }
                    })
                    .collect(),
            }
            .build(),
        }
    }

    /// PERSISTENT RESERVE OUT. `tid` is the TransportID of the nexus,
    /// `ports` every relative target port of the target (for REGISTER AND
    /// MOVE validation). Unit attentions to deliver are appended to `uas`.
    #[allow(clippy::too_many_arguments)]
    pub fn out(
        &mut self,
        n: &ItNexus<'_>,
        tid: &TransportId,
        action: PrOutAction,
        scope: u8,
        pr_type: PrType,
        data: &[u8],
        ports: &[u16],
        uas: &mut Vec<UaTarget>,
    ) -> Result<PrStatus, Sense> {
        if action == PrOutAction::REGISTER_AND_MOVE {
            return self.register_and_move(n, data, ports);
        }
        // APTPL is accepted but nothing persists across a restart; REPORT
        // CAPABILITIES says so (PTPL_C=0).
        let p = PrOutParams::parse(data, action).map_err(|e| e.sense())?;
        match action {
            PrOutAction::REGISTER | PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY => {
                self.register(n, tid, action, &p, uas)
            }
            PrOutAction::RESERVE => self.reserve(n, &p, scope, pr_type),
            PrOutAction::RELEASE => self.release(n, &p, scope, pr_type, uas),
            PrOutAction::CLEAR => self.clear(n, &p, uas),
            _ => self.preempt(n, &p, scope, pr_type, uas),
        }
    }

    fn registration(&mut self, port: PortMatch, rtp: Option<u16>, key: u64, tid: TransportId) {
        self.next_id += 1;
        self.registrations.push(Registration {
            id: self.next_id,
            port,
            rtp,
            key,
            transport_id: tid,
        });
    }

    fn register(
        &mut self,
        n: &ItNexus<'_>,
        tid: &TransportId,
        action: PrOutAction,
        p: &PrOutParams,
        uas: &mut Vec<UaTarget>,
    ) -> Result<PrStatus, Sense> {
        let ignore_key = action == PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY;
        match self.find(n) {
            None => {
                if !ignore_key && p.reservation_key != 0 {
                    return Ok(PrStatus::Conflict);
                }
                if p.service_action_key == 0 {
                    // Registering key zero registers nothing.
                    return Ok(PrStatus::Good);
                }
                // Validate every SPEC_I_PT TransportID before registering.
                let mut extra = Vec::with_capacity(p.transport_ids.len());
                for (i, t) in p.transport_ids.iter().enumerate() {
                    let m = PortMatch::from_transport_id(t)
                        .ok_or_else(|| ParamError::at(28).sense())?;
                    let dup = self.registrations.iter().any(|r| {
                        r.port == m && (r.rtp.is_none() || p.all_tg_pt || r.rtp == Some(n.rtp))
                    });
                    if dup {
                        return Err(ParamError::at(28 + i).sense());
                    }
                    extra.push((m, t.clone()));
                }
                let rtp = (!p.all_tg_pt).then_some(n.rtp);
                self.registration(
                    PortMatch::Exact(n.port.to_string()),
                    rtp,
                    p.service_action_key,
                    tid.clone(),
                );
                for (m, t) in extra {
                    self.registration(m, rtp, p.service_action_key, t);
                }
            }
            Some(i) => {
                if !ignore_key && p.reservation_key != self.registrations[i].key {
                    return Ok(PrStatus::Conflict);
                }
                if p.spec_i_pt {
                    return Err(ParamError::at_bit(20, 3).sense());
                }
                if p.service_action_key == 0 {
                    self.unregister(i, uas);
                } else {
                    self.registrations[i].key = p.service_action_key;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(PrStatus::Good)
    }

    /// Remove registration `i`, releasing the reservation it held (SPC-4
    /// 5.15.11.2.2 for what the other registrants are told).
    fn unregister(&mut self, i: usize, uas: &mut Vec<UaTarget>) {
        let gone = self.registrations.remove(i);
        let Some(r) = self.reservation else {
            return;
        };
        if r.pr_type.is_all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if r.holder == gone.id {
            self.reservation = None;
            if r.pr_type.admits_registrants() {
                uas.extend(
                    self.registrations
                        .iter()
                        .map(|g| g.ua(sense::RESERVATIONS_RELEASED)),
                );
            }
        }
    }

    fn registered_with_key(&self, n: &ItNexus<'_>, key: u64) -> Option<usize> {
        self.find(n).filter(|&i| self.registrations[i].key == key)
    }

    fn reserve(
        &mut self,
        n: &ItNexus<'_>,
        p: &PrOutParams,
        scope: u8,
        pr_type: PrType,
    ) -> Result<PrStatus, Sense> {
        let Some(i) = self.registered_with_key(n, p.reservation_key) else {
            return Ok(PrStatus::Conflict);
        };
        check_scope_type(scope, pr_type)?;
        match self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: self.registrations[i].id,
                    pr_type,
                    scope,
                });
                Ok(PrStatus::Good)
            }
            Some(r) if self.holder_is(&r, i) && r.pr_type == pr_type && r.scope == scope => {
                Ok(PrStatus::Good)
            }
            Some(_) => Ok(PrStatus::Conflict),
        }
    }

    fn release(
        &mut self,
        n: &ItNexus<'_>,
        p: &PrOutParams,
        scope: u8,
        pr_type: PrType,
        uas: &mut Vec<UaTarget>,
    ) -> Result<PrStatus, Sense> {
        let Some(i) = self.registered_with_key(n, p.reservation_key) else {
            return Ok(PrStatus::Conflict);
        };
        let Some(r) = self.reservation else {
            return Ok(PrStatus::Good);
        };
        if !self.holder_is(&r, i) {
            return Ok(PrStatus::Good);
        }
        if r.scope != scope || r.pr_type != pr_type {
            return Err(Sense::illegal_request(
                sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
            ));
        }
        self.reservation = None;
        if r.pr_type.admits_registrants() {
            let me = self.registrations[i].id;
            uas.extend(
                self.registrations
                    .iter()
                    .filter(|g| g.id != me)
                    .map(|g| g.ua(sense::RESERVATIONS_RELEASED)),
            );
        }
        Ok(PrStatus::Good)
    }

    fn clear(
        &mut self,
        n: &ItNexus<'_>,
        p: &PrOutParams,
        uas: &mut Vec<UaTarget>,
    ) -> Result<PrStatus, Sense> {
        let Some(i) = self.registered_with_key(n, p.reservation_key) else {
            return Ok(PrStatus::Conflict);
        };
        let me = self.registrations[i].id;
        uas.extend(
            self.registrations
                .iter()
                .filter(|g| g.id != me)
                .map(|g| g.ua(sense::RESERVATIONS_PREEMPTED)),
        );
        self.registrations.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(PrStatus::Good)
    }

    /// Remove every registration with `key` except the caller's; they are
    /// told REGISTRATIONS PREEMPTED. Returns how many were removed.
    fn remove_key(&mut self, key: u64, me: u64, uas: &mut Vec<UaTarget>) -> usize {
        let before = self.registrations.len();
        let mut kept = Vec::with_capacity(before);
        for g in self.registrations.drain(..) {
            if g.key == key && g.id != me {
                uas.push(g.ua(sense::REGISTRATIONS_PREEMPTED));
            } else {
                kept.push(g);
            }
        }
        self.registrations = kept;
        before - self.registrations.len()
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.15.11.4). Task abort is the
    /// transport's business; the reservation effects are the same.
    fn preempt(
        &mut self,
        n: &ItNexus<'_>,
        p: &PrOutParams,
        scope: u8,
        pr_type: PrType,
        uas: &mut Vec<UaTarget>,
    ) -> Result<PrStatus, Sense> {
        let Some(i) = self.registered_with_key(n, p.reservation_key) else {
            return Ok(PrStatus::Conflict);
        };
        let me = self.registrations[i].id;
        let sark = p.service_action_key;
        match self.reservation {
            None => {
                if sark == 0 {
                    return Err(ParamError::at(8).sense());
                }
                if self.remove_key(sark, me, uas) == 0 {
                    return Ok(PrStatus::Conflict);
                }
            }
            Some(r) if r.pr_type.is_all_registrants() => {
                if sark == 0 {
                    check_scope_type(scope, pr_type)?;
                    let mut kept = Vec::new();
                    for g in self.registrations.drain(..) {
                        if g.id == me {
                            kept.push(g);
                        } else {
                            uas.push(g.ua(sense::REGISTRATIONS_PREEMPTED));
                        }
                    }
                    self.registrations = kept;
                    self.reservation = Some(Reservation {
                        holder: me,
                        pr_type,
                        scope,
                    });
                } else if self.remove_key(sark, me, uas) == 0 {
                    return Ok(PrStatus::Conflict);
                }
            }
            Some(r) => {
                let holder_key = self
                    .registrations
                    .iter()
                    .find(|g| g.id == r.holder)
                    .map(|g| g.key);
                if holder_key == Some(sark) {
                    check_scope_type(scope, pr_type)?;
                    self.remove_key(sark, me, uas);
                    self.reservation = Some(Reservation {
                        holder: me,
                        pr_type,
                        scope,
                    });
                    if r.pr_type != pr_type || r.scope != scope {
                        uas.extend(
                            self.registrations
                                .iter()
                                .filter(|g| g.id != me)
                                .map(|g| g.ua(sense::RESERVATIONS_RELEASED)),
                        );
                    }
                } else {
                    if sark == 0 {
                        return Err(ParamError::at(8).sense());
                    }
                    if self.remove_key(sark, me, uas) == 0 {
                        return Ok(PrStatus::Conflict);
                    }
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(PrStatus::Good)
    }

    /// REGISTER AND MOVE (SPC-4 5.15.8).
    fn register_and_move(
        &mut self,
        n: &ItNexus<'_>,
        data: &[u8],
        ports: &[u16],
    ) -> Result<PrStatus, Sense> {
        let p = RegisterAndMoveParams::parse(data).map_err(|e| e.sense())?;
        let Some(i) = self.registered_with_key(n, p.reservation_key) else {
            return Ok(PrStatus::Conflict);
        };
        let Some(r) = self.reservation else {
            return Ok(PrStatus::Conflict);
        };
        if r.pr_type.is_all_registrants() || r.holder != self.registrations[i].id {
            return Ok(PrStatus::Conflict);
        }
        if p.service_action_key == 0 {
            return Err(ParamError::at(8).sense());
        }
        // The destination must name one I_T nexus: a port and a target port.
        let Some(dest_port) = p.transport_id.initiator_port() else {
            return Err(ParamError::at(24).sense());
        };
        if !ports.contains(&p.relative_target_port) {
            return Err(ParamError::at(18).sense());
        }
        if dest_port == n.port && p.relative_target_port == n.rtp {
            return Err(ParamError::at(24).sense());
        }
        let dest = ItNexus {
            port: &dest_port,
            rtp: p.relative_target_port,
        };
        let dest_id = match self.find(&dest) {
            Some(d) => {
                self.registrations[d].key = p.service_action_key;
                self.registrations[d].id
            }
            None => {
                self.registration(
                    PortMatch::Exact(dest_port.clone()),
                    Some(p.relative_target_port),
                    p.service_action_key,
                    p.transport_id.clone(),
                );
                self.next_id
            }
        };
        self.reservation = Some(Reservation {
            holder: dest_id,
            ..r
        });
        if p.unreg {
            let me = self.registrations[i].id;
            self.registrations.retain(|g| g.id != me);
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(PrStatus::Good)
    }
}

/// Scope must be LU_SCOPE and the type one SPC-4 defines.
fn check_scope_type(scope: u8, pr_type: PrType) -> Result<(), Sense> {
    if scope != SCOPE_LU {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    if !pr_type.is_valid() {
        return Err(Sense::invalid_field_in_cdb(2, Some(3)));
    }
    Ok(())
}
