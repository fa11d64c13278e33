//! The device server of a direct-access logical unit (SBC-3 over SPC-4).
//!
//! [`LogicalUnit::execute`] takes one command from one I_T nexus and returns
//! its status, sense and Data-In. It is called concurrently from every
//! connection: the LU's mutable state (nexus table with unit attentions,
//! reservations, mode pages) sits behind one mutex that each command holds
//! for a hash lookup and a few field reads — never across backend I/O.
//!
//! A command passes these gates in order (SAM-5/SPC-4 precedence):
//! 1. unit attention pending for the nexus (except INQUIRY, REPORT LUNS,
//!    REQUEST SENSE);
//! 2. CDB validation (INVALID COMMAND OPERATION CODE, INVALID FIELD IN CDB);
//! 3. ALUA access state of the nexus's target port group (NOT READY
//!    04/0a, 04/0b, 04/0c), then the operator's offline switch (04/03);
//! 4. reservations (RESERVATION CONFLICT);
//! 5. write protection (DATA PROTECT 27/00);
//!
//! and is then executed against the [`Backend`].

#[cfg(any(test, feature = "mem"))]
pub mod mem;
mod ports;
mod reservation;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::alua::{AluaState, SetTargetPortGroups};
use crate::capacity::{ReadCapacity10Data, ReadCapacity16Data};
use crate::cdb::{
    CdbError, Command, CommandType, ModeSelectParams, ModeSenseParams, PageControl, ReadWrite,
    VerifyParams, WriteSameParams,
};
use crate::codec::truncate_to;
use crate::error::ParamError;
use crate::inquiry::{
    Association, BlockDeviceCharacteristics, BlockLimits, Designator, DeviceIdentification,
    LogicalBlockProvisioning, PeripheralType, StandardInquiry, SupportedVpdPages, UnitSerialNumber,
    VpdPage, NON_ROTATING_MEDIUM, PROVISIONING_TYPE_THIN, QUALIFIER_NOT_CAPABLE,
    VERSION_DESCRIPTOR_ISCSI, VERSION_DESCRIPTOR_SAM5, VERSION_DESCRIPTOR_SBC3,
    VERSION_DESCRIPTOR_SPC4, VERSION_SPC4,
};
use crate::luns::{Lun, ReportLunsData};
use crate::mode::{
    BlockDescriptor, CachingPage, ControlPage, InformationalExceptionsPage, ModePage,
    ModeParameters, ModeSelectList, DSP_DPOFUA, DSP_WRITE_PROTECT, PAGE_ALL, PAGE_CACHING,
    PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS, SUBPAGE_ALL,
};
use crate::opcodes;
use crate::pr::{PrOutAction, PrType, TransportId};
use crate::provisioning::{LbaStatus, LbaStatusDescriptor, ProvisioningStatus, UnmapParams};
use crate::sense::{self, Asc, Sense, SenseData, SenseFormat, SenseKey};

pub use ports::{PortsError, TargetPortGroup, TargetPorts, DEFAULT_SUPPORTED_STATES};
use reservation::{ItNexus, PrState, PrStatus, UaTarget};

/// Storage under a logical unit. Offsets and lengths are in bytes and
/// always block aligned and within `len_bytes`.
pub trait Backend: Send + Sync {
    fn len_bytes(&self) -> u64;
    /// Read the store's size again (an operator grew or shrank it); the new
    /// `len_bytes`. A store of fixed size has nothing to read.
    fn refresh_len(&self) -> io::Result<u64> {
        Ok(self.len_bytes())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make written data stable (fdatasync for files); called for
    /// SYNCHRONIZE CACHE and FUA writes.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate; afterwards the range reads as zeroes.
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()>;
    /// For GET LBA STATUS: whether the range starting at `offset` is mapped
    /// and how many bytes the run of that state covers (at most `len`).
    fn map_status(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let _ = offset;
        Ok((true, len))
    }
    /// True when writes sit in a volatile cache until `flush` (a file
    /// without O_DIRECT|O_SYNC); memory is not volatile in this sense.
    fn volatile_write_cache(&self) -> bool;
    /// Read only if that needs no waiting (the data is in memory, e.g. the
    /// page cache): `Ok(true)` when `buf` was filled, `Ok(false)` when the
    /// read would block (`buf` may then hold anything). The default never
    /// tries, which is right for a backend that cannot tell.
    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let _ = (buf, offset);
        Ok(false)
    }
}

/// SCSI STATUS (SAM-5 table 43). Prints in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u8);

impl Status {
    pub const GOOD: Status = Status(0x00);
    pub const CHECK_CONDITION: Status = Status(0x02);
    pub const CONDITION_MET: Status = Status(0x04);
    pub const BUSY: Status = Status(0x08);
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    pub const TASK_SET_FULL: Status = Status(0x28);
    pub const ACA_ACTIVE: Status = Status(0x30);
    pub const TASK_ABORTED: Status = Status(0x40);
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = match *self {
            Status::GOOD => "GOOD",
            Status::CHECK_CONDITION => "CHECK CONDITION",
            Status::CONDITION_MET => "CONDITION MET",
            Status::BUSY => "BUSY",
            Status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            Status::TASK_SET_FULL => "TASK SET FULL",
            Status::ACA_ACTIVE => "ACA ACTIVE",
            Status::TASK_ABORTED => "TASK ABORTED",
            _ => return write!(f, "Status({:#04x})", self.0),
        };
        f.write_str(n)
    }
}

/// Task attribute (SAM-5 8.6), numbered as the iSCSI ATTR field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TaskAttribute(pub u8);

impl TaskAttribute {
    pub const UNTAGGED: TaskAttribute = TaskAttribute(0);
    pub const SIMPLE: TaskAttribute = TaskAttribute(1);
    pub const ORDERED: TaskAttribute = TaskAttribute(2);
    pub const HEAD_OF_QUEUE: TaskAttribute = TaskAttribute(3);
    pub const ACA: TaskAttribute = TaskAttribute(4);
}

/// An I_T nexus as the transport identifies it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Nexus {
    /// SCSI initiator port name, `iqn...,i,0x<ISID in hex>`.
    pub initiator_port: String,
    pub initiator_name: String,
    pub relative_target_port: u16,
    /// The initiator port's TransportID; empty to derive it from
    /// `initiator_port`.
    pub transport_id: Vec<u8>,
}

impl Nexus {
    /// The nexus of an iSCSI session: initiator name, 48-bit ISID and the
    /// target portal group tag the session logged in through.
    pub fn iscsi(initiator_name: &str, isid: u64, relative_target_port: u16) -> Nexus {
        let initiator_port = format!("{initiator_name},i,0x{:012x}", isid & 0xffff_ffff_ffff);
        let transport_id = TransportId::from_initiator_port(&initiator_port).build();
        Nexus {
            initiator_port,
            initiator_name: initiator_name.to_string(),
            relative_target_port,
            transport_id,
        }
    }

    fn it(&self) -> ItNexus<'_> {
        ItNexus {
            port: &self.initiator_port,
            rtp: self.relative_target_port,
        }
    }
}

/// One command to execute.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub nexus: &'a Nexus,
    pub cdb: &'a [u8],
    /// The Data-Out the initiator sent (see [`LogicalUnit::data_out_len`]).
    pub data_out: &'a [u8],
    pub task_attr: TaskAttribute,
}

/// The outcome of a command.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    pub status: Status,
    /// Sense data, already in the LU's format (fixed, or descriptor when
    /// the control mode page's D_SENSE is set).
    pub sense: Option<SenseData>,
    /// Data-In, already cut to the CDB's ALLOCATION LENGTH; the transport
    /// computes residuals against its Expected Data Transfer Length.
    pub data_in: Bytes,
}

impl Response {
    pub fn good(data_in: Bytes) -> Response {
        Response {
            status: Status::GOOD,
            sense: None,
            data_in,
        }
    }

    pub fn check_condition(sense: &Sense, format: SenseFormat) -> Response {
        Response {
            status: Status::CHECK_CONDITION,
            sense: Some(sense.encode(format)),
            data_in: Bytes::new(),
        }
    }

    pub fn with_status(status: Status) -> Response {
        Response {
            status,
            sense: None,
            data_in: Bytes::new(),
        }
    }

    /// The sense data decoded (tests and logging).
    pub fn decoded_sense(&self) -> Option<Sense> {
        self.sense.as_ref().and_then(|s| Sense::decode(s).ok())
    }
}

/// How a logical unit presents itself.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LuConfig {
    pub lun: Lun,
    /// Logical block length: 512 or 4096.
    pub block_size: u32,
    /// T10 VENDOR IDENTIFICATION (8 ASCII characters at most).
    pub vendor: String,
    /// PRODUCT IDENTIFICATION (16 at most).
    pub product: String,
    /// PRODUCT REVISION LEVEL (4 at most).
    pub revision: String,
    /// UNIT SERIAL NUMBER (printable ASCII).
    pub serial: String,
    /// NAA IEEE Registered Extended name (first nibble 6): the LU's WWID,
    /// identical through every target port.
    pub naa_id: [u8; 16],
    /// Thin provisioned: UNMAP, WRITE SAME with UNMAP and GET LBA STATUS
    /// deallocate and report; LBPME/LBPRZ are set.
    pub thin: bool,
    /// Refuse every write with DATA PROTECT / WRITE PROTECTED.
    pub read_only: bool,
    /// MAXIMUM TRANSFER LENGTH in bytes (rounded down to blocks).
    pub max_transfer_bytes: u32,
    /// OPTIMAL TRANSFER LENGTH in bytes.
    pub optimal_transfer_bytes: u32,
}

/// Default MAXIMUM TRANSFER LENGTH: 32 MiB, which is 65536 blocks of 512
/// bytes — the largest single transfer libiscsi's conformance tests issue
/// — while bounding the memory one READ can pin.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 32 << 20;
/// Default OPTIMAL TRANSFER LENGTH: 1 MiB, a typical iSCSI MaxBurstLength.
pub const DEFAULT_OPTIMAL_TRANSFER_BYTES: u32 = 1 << 20;

impl LuConfig {
    /// Defaults for everything but identity.
    pub fn new(lun: Lun, block_size: u32, serial: impl Into<String>, naa_id: [u8; 16]) -> LuConfig {
        LuConfig {
            lun,
            block_size,
            vendor: "MPATH".into(),
            product: "VIRTUAL-DISK".into(),
            revision: "0001".into(),
            serial: serial.into(),
            naa_id,
            thin: false,
            read_only: false,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            optimal_transfer_bytes: DEFAULT_OPTIMAL_TRANSFER_BYTES,
        }
    }
}

/// Why a [`LuConfig`] was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum LuConfigError {
    #[error("block size {0} is not 512 or 4096")]
    BlockSize(u32),
    #[error("NAA identifier must be NAA IEEE Registered Extended (first nibble 6)")]
    Naa,
    #[error("serial number must be 1 to 255 printable ASCII characters")]
    Serial,
    #[error("maximum transfer length is smaller than one block")]
    MaxTransfer,
}

// Limits advertised in the Block Limits VPD page and enforced here.

/// MAXIMUM COMPARE AND WRITE LENGTH: the largest value the one-byte NUMBER
/// OF LOGICAL BLOCKS field can hold, so no CDB can exceed it; it bounds
/// the compare buffer to 255 blocks.
const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
/// MAXIMUM UNMAP LBA COUNT per descriptor: 1 Mi blocks keeps one backend
/// unmap call bounded (and within the range initiators sanity-check).
const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: well above the 256 that
/// initiators batch, well below the 4095 a 16-bit parameter list can hold.
const MAX_UNMAP_DESCRIPTORS: u32 = 2048;
/// GET LBA STATUS descriptors per command: bounds backend map queries.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;
/// Unit of backend I/O for VERIFY and WRITE SAME, which may span the whole
/// medium: bounds their buffers.
const IO_CHUNK_BYTES: u64 = 1 << 20;
/// Nexus table size: beyond it, idle entries are forgotten (they get
/// POWER ON/RESET again if they come back).
const MAX_NEXUSES: usize = 4096;
/// Pending unit attentions kept per nexus; further distinct ones are
/// dropped (the oldest, which include any reset, are the important ones).
const MAX_PENDING_UAS: usize = 8;

/// A direct-access logical unit.
pub struct LogicalUnit {
    config: LuConfig,
    backend: Arc<dyn Backend>,
    ports: Arc<TargetPorts>,
    block_size: u64,
    capacity: AtomicU64,
    online: AtomicBool,
    /// Fault injection: every READ fails with MEDIUM ERROR while TEST UNIT READY passes.
    read_errors: AtomicBool,
    busy: AtomicBool,
    // Mirrors of `ModeState` for lock-free reads on the I/O path; written
    // only under the state mutex.
    d_sense: AtomicBool,
    swp: AtomicBool,
    wce: AtomicBool,
    state: Mutex<LuState>,
    /// Serialises COMPARE AND WRITE and ORWRITE so their read-modify-write
    /// is atomic with respect to each other.
    atomic_rmw: Mutex<()>,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("lun", &self.config.lun)
            .field("capacity_blocks", &self.capacity_blocks())
            .field("online", &self.is_online())
            .finish()
    }
}

impl LogicalUnit {
    pub fn new(
        config: LuConfig,
        backend: Arc<dyn Backend>,
        ports: Arc<TargetPorts>,
    ) -> Result<LogicalUnit, LuConfigError> {
        if config.block_size != 512 && config.block_size != 4096 {
            return Err(LuConfigError::BlockSize(config.block_size));
        }
        if config.naa_id[0] >> 4 != 6 {
            return Err(LuConfigError::Naa);
        }
        let s = &config.serial;
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
            return Err(LuConfigError::Serial);
        }
        if config.max_transfer_bytes < config.block_size {
            return Err(LuConfigError::MaxTransfer);
        }
        let block_size = u64::from(config.block_size);
        let volatile = backend.volatile_write_cache();
        let mode = ModeState {
            wce: volatile,
            d_sense: false,
            swp: false,
        };
        Ok(LogicalUnit {
            capacity: AtomicU64::new(backend.len_bytes() / block_size),
            config,
            backend,
            ports,
            block_size,
            online: AtomicBool::new(true),
            read_errors: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            d_sense: AtomicBool::new(mode.d_sense),
            swp: AtomicBool::new(mode.swp),
            wce: AtomicBool::new(mode.wce),
            state: Mutex::new(LuState {
                nexuses: NexusTable::default(),
                pr: PrState::default(),
                mode,
            }),
            atomic_rmw: Mutex::new(()),
        })
    }

    pub fn lun(&self) -> Lun {
        self.config.lun
    }

    pub fn config(&self) -> &LuConfig {
        &self.config
    }

    pub fn ports(&self) -> &Arc<TargetPorts> {
        &self.ports
    }

    pub fn capacity_blocks(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Operator switch: offline, every media-access command and TEST UNIT
    /// READY fail with NOT READY 04/03 (MANUAL INTERVENTION REQUIRED);
    /// INQUIRY and the other identification commands still work. Coming
    /// back online tells every nexus NOT READY TO READY CHANGE (28/00).
    pub fn set_online(&self, online: bool) {
        let was = self.online.swap(online, Ordering::AcqRel);
        if online && !was {
            self.lock().nexuses.broadcast(
                sense::NOT_READY_TO_READY_CHANGE_MEDIUM_MAY_HAVE_CHANGED,
                None,
            );
        }
    }

    /// Fault injection: while on, every READ fails with MEDIUM ERROR, UNRECOVERED READ
    /// ERROR (03/11/00) — a LU that answers TEST UNIT READY but cannot serve data, which
    /// only a checker that reads finds.
    pub fn set_read_errors(&self, on: bool) {
        self.read_errors.store(on, Ordering::Release);
    }

    pub fn read_errors(&self) -> bool {
        self.read_errors.load(Ordering::Acquire)
    }

    /// Answer every command with status BUSY while `on` (fault injection: a target that
    /// cannot take commands for a while).
    pub fn set_busy(&self, on: bool) {
        self.busy.store(on, Ordering::Release);
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// LOGICAL UNIT RESET (also used for target resets): SPC-2 reservations
    /// are released, mode parameters return to their defaults, and every
    /// nexus gets BUS DEVICE RESET FUNCTION OCCURRED (29/03). Persistent
    /// reservations survive.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.pr.spc2_reset(None);
        let defaults = self.default_mode();
        self.apply_mode(&mut st, defaults);
        st.nexuses
            .broadcast(sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED, None);
    }

    /// I_T nexus loss (session closed or failed): its SPC-2 reservation is
    /// released and its state forgotten, so it sees POWER ON/RESET when it
    /// returns. Registrations and persistent reservations survive.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let n = nexus.it();
        let mut st = self.lock();
        st.pr.spc2_reset(Some(&n));
        st.nexuses.remove(&n);
    }

    /// Ask the backend for its size again ([`Backend::refresh_len`]) and, if
    /// the capacity changed, tell every nexus (see [`resize_notify`](Self::resize_notify)).
    /// The capacity now, in bytes.
    pub fn rescan_backend(&self) -> io::Result<u64> {
        let bytes = self.backend.refresh_len()?;
        if bytes < self.block_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{bytes} bytes is less than one {}-byte block",
                    self.block_size
                ),
            ));
        }
        self.resize_notify();
        Ok(self.capacity.load(Ordering::Acquire) * self.block_size)
    }

    /// The backend changed size: re-read it and tell every nexus CAPACITY
    /// DATA HAS CHANGED (2a/09).
    pub fn resize_notify(&self) {
        let blocks = self.backend.len_bytes() / self.block_size;
        if self.capacity.swap(blocks, Ordering::AcqRel) != blocks {
            self.lock()
                .nexuses
                .broadcast(sense::CAPACITY_DATA_HAS_CHANGED, None);
        }
    }

    /// How many bytes of Data-Out `cdb` expects, so the transport knows
    /// what to collect. On error the transport may still collect what the
    /// initiator sends and call [`execute`](Self::execute), which reports
    /// the error with the right precedence against unit attentions.
    pub fn data_out_len(&self, cdb: &[u8]) -> Result<u64, CdbError> {
        Ok(Command::parse(cdb)?.data_out_len(self.config.block_size))
    }

    fn lock(&self) -> MutexGuard<'_, LuState> {
        // A panic while holding the lock cannot leave the state torn in a
        // way later commands cannot cope with; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sense_format(&self) -> SenseFormat {
        if self.d_sense.load(Ordering::Relaxed) {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        }
    }

    fn check(&self, s: Sense) -> Response {
        Response::check_condition(&s, self.sense_format())
    }

    /// Execute one command.
    pub fn execute(&self, req: &Request<'_>) -> Response {
        self.execute_as(req, false)
            .unwrap_or_else(|| self.check(read_error(0)))
    }

    /// Execute `req` only if it can be done without blocking on the backend:
    /// a READ whose data [`Backend::try_read_at`] serves at once. `None`
    /// means nothing happened and [`execute`](Self::execute) must run on a
    /// thread that may block. Lets a transport serve page-cache hits inline
    /// and send only real disk reads to a thread pool.
    pub fn try_execute(&self, req: &Request<'_>) -> Option<Response> {
        match CommandType::classify(req.cdb) {
            Ok(
                CommandType::Read6
                | CommandType::Read10
                | CommandType::Read12
                | CommandType::Read16,
            ) => self.execute_as(req, true),
            _ => None,
        }
    }

    /// `nowait`: reads that would block return `None` instead. Reads have no side effect
    /// but their data, and the checks before them pop a unit attention only by answering
    /// with it, so an abandoned attempt leaves nothing behind.
    fn execute_as(&self, req: &Request<'_>, nowait: bool) -> Option<Response> {
        if self.busy() {
            return Some(Response::with_status(Status::BUSY));
        }
        let classified = CommandType::classify(req.cdb);
        let parsed = classified.and_then(|t| Command::parse_as(t, req.cdb).map(|c| (t, c)));
        let n = req.nexus.it();
        let (ty, cmd) = {
            let mut st = self.lock();
            let gen = self.ports.generation();
            let reports_ua = classified.map_or(true, CommandType::reports_unit_attention);
            if let Some(slot) = st.nexuses.slot(&n, gen) {
                if reports_ua {
                    if let Some(asc) = slot.pop_ua() {
                        return Some(self.check(Sense::unit_attention(asc)));
                    }
                }
            }
            let (ty, cmd) = match parsed {
                Ok(p) => p,
                Err(e) => return Some(self.check(e.sense())),
            };
            if let Some(s) = self.access_refusal(ty, n.rtp) {
                return Some(self.check(s));
            }
            if st.pr.any_reservation() && st.pr.conflicts(&n, ty) {
                return Some(Response::with_status(Status::RESERVATION_CONFLICT));
            }
            if let Command::RequestSense { desc, alloc_len } = cmd {
                return Some(self.request_sense(&mut st, &n, desc, alloc_len));
            }
            (ty, cmd)
        };
        if ty.writes_medium() && (self.config.read_only || self.swp.load(Ordering::Relaxed)) {
            return Some(self.check(Sense::new(SenseKey::DATA_PROTECT, sense::WRITE_PROTECTED)));
        }
        let result = match cmd {
            Command::Read(rw) if nowait => self.read(rw, true),
            cmd => self.dispatch(req, &n, ty, cmd),
        };
        match result {
            Ok(data) => Some(Response::good(data)),
            Err(Failure::Check(s)) => Some(self.check(s)),
            Err(Failure::Conflict) => Some(Response::with_status(Status::RESERVATION_CONFLICT)),
            Err(Failure::WouldBlock) => None,
        }
    }

    /// ALUA (SPC-4 5.15.2.4) and offline refusals.
    fn access_refusal(&self, ty: CommandType, rtp: u16) -> Option<Sense> {
        use CommandType as T;
        let state = self.ports.port_state(rtp);
        if !state.is_active() && state != AluaState::LBA_DEPENDENT {
            let identification = matches!(
                ty,
                T::Inquiry
                    | T::ReportLuns
                    | T::ReportTargetPortGroups
                    | T::RequestSense
                    | T::ReportSupportedOperationCodes
            );
            let (allowed, asc) = match state {
                AluaState::STANDBY => (
                    identification
                        || matches!(
                            ty,
                            T::SetTargetPortGroups
                                | T::ModeSense6
                                | T::ModeSense10
                                | T::ModeSelect6
                                | T::ModeSelect10
                                | T::PersistentReserveIn(_)
                                | T::PersistentReserveOut(_)
                        ),
                    sense::TARGET_PORT_IN_STANDBY_STATE,
                ),
                AluaState::TRANSITIONING => {
                    (identification, sense::ASYMMETRIC_ACCESS_STATE_TRANSITION)
                }
                // Unavailable, offline and reserved values.
                _ => (
                    identification || ty == T::SetTargetPortGroups,
                    sense::TARGET_PORT_IN_UNAVAILABLE_STATE,
                ),
            };
            if !allowed {
                return Some(Sense::not_ready(asc));
            }
        }
        if ty.is_media_access() && !self.is_online() {
            return Some(Sense::not_ready(
                sense::LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED,
            ));
        }
        None
    }

    /// REQUEST SENSE: report (and clear) the oldest unit attention, else
    /// the condition a media command would hit, else NO SENSE.
    fn request_sense(
        &self,
        st: &mut LuState,
        n: &ItNexus<'_>,
        desc: bool,
        alloc_len: u8,
    ) -> Response {
        let gen = self.ports.generation();
        let ua = st.nexuses.slot(n, gen).and_then(NexusSlot::pop_ua);
        let s = match ua {
            Some(asc) => Sense::unit_attention(asc),
            None => self
                .access_refusal(CommandType::TestUnitReady, n.rtp)
                .unwrap_or(Sense::new(
                    SenseKey::NO_SENSE,
                    sense::NO_ADDITIONAL_SENSE_INFORMATION,
                )),
        };
        let format = if desc {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        };
        let data = s.encode(format);
        Response::good(Bytes::copy_from_slice(
            &data[..data.len().min(usize::from(alloc_len))],
        ))
    }

    fn dispatch(
        &self,
        req: &Request<'_>,
        n: &ItNexus<'_>,
        ty: CommandType,
        cmd: Command,
    ) -> CmdResult {
        match cmd {
            Command::TestUnitReady | Command::RequestSense { .. } => Ok(Bytes::new()),
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => Ok(vec_to_bytes(
                self.inquiry(n.rtp, evpd, page_code)?,
                u32::from(alloc_len),
            )),
            Command::ReportLuns {
                select_report,
                alloc_len,
            } => {
                let d = ReportLunsData::for_select(&[self.config.lun], select_report)
                    .ok_or(CdbError::byte(2))?;
                Ok(vec_to_bytes(d.build(), alloc_len))
            }
            Command::ReadCapacity10 { .. } => Ok(Bytes::copy_from_slice(
                &ReadCapacity10Data::new(self.capacity_blocks(), self.config.block_size).build(),
            )),
            Command::ReadCapacity16 { alloc_len } => Ok(vec_to_bytes(
                self.read_capacity_16().build().to_vec(),
                alloc_len,
            )),
            Command::Read(rw) => self.read(rw, false),
            Command::Write(rw) => self.write(rw, req.data_out),
            Command::OrWrite(rw) => self.or_write(rw, req.data_out),
            Command::Verify(v) => self.verify(v, req.data_out),
            Command::WriteAndVerify(v) => self.write_and_verify(v, req.data_out),
            Command::SynchronizeCache { lba, blocks, .. } => self.synchronize_cache(lba, blocks),
            Command::PreFetch { lba, blocks, .. } => {
                self.check_transfer(blocks, if ty == CommandType::PreFetch10 { 7 } else { 10 })?;
                self.check_range(lba, u64::from(blocks))?;
                Ok(Bytes::new())
            }
            Command::WriteSame(ws) => self.write_same(ws, req.data_out, ty),
            Command::CompareAndWrite {
                lba, blocks, fua, ..
            } => self.compare_and_write(lba, blocks, fua, req.data_out),
            Command::Unmap { anchor, param_len } => self.unmap(anchor, param_len, req.data_out),
            Command::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len),
            Command::ModeSense(p) => self.mode_sense(p),
            Command::ModeSelect(p) => self.mode_select(p, n, req.data_out),
            Command::StartStopUnit { loej, start, .. } => {
                if loej && !start {
                    // Our medium is not removable: there is nothing to eject.
                    return Err(CdbError::field(4, 1).into());
                }
                Ok(Bytes::new())
            }
            Command::ReportSupportedOperationCodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = if options == 0 {
                    opcodes::supported_opcodes(rctd).build()
                } else {
                    opcodes::one_command(options, opcode, service_action, rctd)?.build()
                };
                Ok(vec_to_bytes(data, alloc_len))
            }
            Command::ReportTargetPortGroups {
                extended,
                alloc_len,
            } => Ok(vec_to_bytes(self.ports.report(extended).build(), alloc_len)),
            Command::SetTargetPortGroups { param_len } => {
                self.set_target_port_groups(n, param_len, req.data_out)
            }
            Command::PersistentReserveIn { action, alloc_len } => Ok(vec_to_bytes(
                self.lock().pr.read(action),
                u32::from(alloc_len),
            )),
            Command::PersistentReserveOut {
                action,
                scope,
                pr_type,
                param_len,
            } => self.persistent_reserve_out(req, n, action, scope, pr_type, param_len),
            Command::Reserve => match self.lock().pr.spc2_reserve(n) {
                PrStatus::Good => Ok(Bytes::new()),
                PrStatus::Conflict => Err(Failure::Conflict),
            },
            Command::Release => {
                self.lock().pr.spc2_release(n);
                Ok(Bytes::new())
            }
            Command::ReadDefectData {
                long,
                plist,
                glist,
                format,
                alloc_len,
            } => {
                // No defects to report: just the header echoing the request.
                let flags = (u8::from(plist) << 4) | (u8::from(glist) << 3) | format;
                let v = if long {
                    vec![0, flags, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![0, flags, 0, 0]
                };
                Ok(vec_to_bytes(v, alloc_len))
            }
        }
    }

    // ---- identification ----

    fn pq_type(&self) -> u8 {
        PeripheralType::DIRECT_ACCESS.0
    }

    fn standard_inquiry(&self) -> StandardInquiry {
        StandardInquiry {
            qualifier: 0,
            device_type: PeripheralType::DIRECT_ACCESS,
            removable: false,
            version: VERSION_SPC4,
            hisup: true,
            response_data_format: 2,
            sccs: false,
            tpgs: self.ports.mode().tpgs(),
            three_pc: false,
            protect: false,
            encserv: false,
            multip: self.ports.relative_target_ports().nth(1).is_some(),
            cmdque: true,
            vendor: self.config.vendor.clone(),
            product: self.config.product.clone(),
            revision: self.config.revision.clone(),
            version_descriptors: vec![
                VERSION_DESCRIPTOR_SAM5,
                VERSION_DESCRIPTOR_ISCSI,
                VERSION_DESCRIPTOR_SPC4,
                VERSION_DESCRIPTOR_SBC3,
            ],
        }
    }

    fn inquiry(&self, rtp: u16, evpd: bool, page: u8) -> Result<Vec<u8>, Failure> {
        if !evpd {
            return Ok(self.standard_inquiry().build());
        }
        let pq = self.pq_type();
        let bs = self.config.block_size;
        let data = match VpdPage(page) {
            VpdPage::SUPPORTED_VPD_PAGES => SupportedVpdPages {
                pages: vec![
                    VpdPage::SUPPORTED_VPD_PAGES.0,
                    VpdPage::UNIT_SERIAL_NUMBER.0,
                    VpdPage::DEVICE_IDENTIFICATION.0,
                    VpdPage::BLOCK_LIMITS.0,
                    VpdPage::BLOCK_DEVICE_CHARACTERISTICS.0,
                    VpdPage::LOGICAL_BLOCK_PROVISIONING.0,
                ],
            }
            .build(pq),
            VpdPage::UNIT_SERIAL_NUMBER => UnitSerialNumber {
                serial: self.config.serial.clone(),
            }
            .build(pq),
            VpdPage::DEVICE_IDENTIFICATION => {
                let mut designators = vec![Designator::naa(self.config.naa_id)];
                designators.push(Designator::iscsi_name(
                    Association::TARGET_PORT,
                    &self.ports.target_port_name(rtp),
                ));
                designators.push(Designator::relative_target_port(rtp));
                if let Some(g) = self.ports.group_of_port(rtp) {
                    designators.push(Designator::target_port_group(g));
                }
                designators.push(Designator::iscsi_name(
                    Association::TARGET_DEVICE,
                    self.ports.target_name(),
                ));
                DeviceIdentification { designators }.build(pq)
            }
            VpdPage::BLOCK_LIMITS => {
                let thin = self.config.thin;
                BlockLimits {
                    wsnz: false,
                    max_compare_and_write: MAX_COMPARE_AND_WRITE_BLOCKS,
                    optimal_transfer_granularity: 1,
                    max_transfer: self.max_transfer_blocks(),
                    optimal_transfer: (self.config.optimal_transfer_bytes / bs).max(1),
                    max_prefetch: self.max_transfer_blocks(),
                    max_unmap_lba_count: if thin { MAX_UNMAP_LBA_COUNT } else { 0 },
                    max_unmap_descriptors: if thin { MAX_UNMAP_DESCRIPTORS } else { 0 },
                    optimal_unmap_granularity: u32::from(thin),
                    unmap_granularity_alignment: None,
                    // No limit: WRITE SAME is chunked internally.
                    max_write_same: 0,
                }
                .build(pq)
            }
            VpdPage::BLOCK_DEVICE_CHARACTERISTICS => BlockDeviceCharacteristics {
                rotation_rate: NON_ROTATING_MEDIUM,
                form_factor: 0,
            }
            .build(pq),
            VpdPage::LOGICAL_BLOCK_PROVISIONING => {
                let thin = self.config.thin;
                LogicalBlockProvisioning {
                    threshold_exponent: 0,
                    lbpu: thin,
                    lbpws: thin,
                    lbpws10: thin,
                    lbprz: thin,
                    anc_sup: false,
                    dp: false,
                    provisioning_type: if thin { PROVISIONING_TYPE_THIN } else { 0 },
                }
                .build(pq)
            }
            _ => return Err(CdbError::byte(2).into()),
        };
        Ok(data)
    }

    fn read_capacity_16(&self) -> ReadCapacity16Data {
        ReadCapacity16Data {
            last_lba: self.capacity_blocks().saturating_sub(1),
            block_len: self.config.block_size,
            lbpme: self.config.thin,
            lbprz: self.config.thin,
            ..Default::default()
        }
    }

    // ---- media access ----

    fn max_transfer_blocks(&self) -> u32 {
        self.config.max_transfer_bytes / self.config.block_size
    }

    /// TRANSFER LENGTH above MAXIMUM TRANSFER LENGTH is INVALID FIELD IN CDB
    /// (SBC-3 5.13), pointing at the length field's first byte.
    fn check_transfer(&self, blocks: u32, field_byte: u16) -> Result<(), Sense> {
        if blocks > self.max_transfer_blocks() {
            return Err(Sense::invalid_field_in_cdb(field_byte, None));
        }
        Ok(())
    }

    /// LBA + blocks must not pass the end of the medium (SBC-3 4.5).
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity_blocks() => Ok(()),
            _ => Err(lba_out_of_range()),
        }
    }

    fn offset(&self, lba: u64) -> u64 {
        lba * self.block_size
    }

    fn len_of(&self, blocks: u64) -> usize {
        usize::try_from(blocks * self.block_size).unwrap_or(usize::MAX)
    }

    /// Writes must reach stable storage before GOOD: FUA, or the initiator
    /// turned the write cache off (WCE=0) over a volatile backend.
    fn needs_flush(&self, fua: bool) -> bool {
        fua || (self.backend.volatile_write_cache() && !self.wce.load(Ordering::Relaxed))
    }

    fn flush(&self, lba: u64) -> Result<(), Sense> {
        self.backend.flush().map_err(|_| write_error(lba))
    }

    fn read(&self, rw: ReadWrite, nowait: bool) -> CmdResult {
        self.check_transfer(rw.blocks, 0)?;
        self.check_range(rw.lba, u64::from(rw.blocks))?;
        if rw.blocks == 0 {
            return Ok(Bytes::new());
        }
        if self.read_errors() {
            return Err(read_error(rw.lba).into());
        }
        // The only allocation of the read path: the data buffer itself.
        let mut buf = vec![0u8; self.len_of(u64::from(rw.blocks))];
        let offset = self.offset(rw.lba);
        if nowait {
            match self.backend.try_read_at(&mut buf, offset) {
                Ok(true) => return Ok(Bytes::from(buf)),
                Ok(false) => return Err(Failure::WouldBlock),
                Err(_) => return Err(read_error(rw.lba).into()),
            }
        }
        self.backend
            .read_at(&mut buf, offset)
            .map_err(|_| read_error(rw.lba))?;
        Ok(Bytes::from(buf))
    }

    /// The whole blocks of Data-Out for a `blocks`-block write. An initiator
    /// that sent less (Expected Data Transfer Length below the CDB's) gets
    /// only what it sent written, which is what iSCSI residual handling
    /// expects; extra bytes are ignored.
    fn write_payload<'a>(&self, blocks: u32, data_out: &'a [u8]) -> &'a [u8] {
        let want = self.len_of(u64::from(blocks));
        let have = data_out.len().min(want);
        let bs = self.config.block_size as usize;
        &data_out[..have - have % bs]
    }

    fn write(&self, rw: ReadWrite, data_out: &[u8]) -> CmdResult {
        self.check_transfer(rw.blocks, 0)?;
        self.check_range(rw.lba, u64::from(rw.blocks))?;
        let payload = self.write_payload(rw.blocks, data_out);
        if !payload.is_empty() {
            self.backend
                .write_at(payload, self.offset(rw.lba))
                .map_err(|_| write_error(rw.lba))?;
        }
        if self.needs_flush(rw.fua) {
            self.flush(rw.lba)?;
        }
        Ok(Bytes::new())
    }

    fn or_write(&self, rw: ReadWrite, data_out: &[u8]) -> CmdResult {
        self.check_transfer(rw.blocks, 10)?;
        self.check_range(rw.lba, u64::from(rw.blocks))?;
        let payload = self.write_payload(rw.blocks, data_out);
        if !payload.is_empty() {
            let _g = self.atomic_rmw.lock().unwrap_or_else(|e| e.into_inner());
            let mut cur = vec![0u8; payload.len()];
            self.backend
                .read_at(&mut cur, self.offset(rw.lba))
                .map_err(|_| read_error(rw.lba))?;
            cur.iter_mut().zip(payload).for_each(|(c, d)| *c |= d);
            self.backend
                .write_at(&cur, self.offset(rw.lba))
                .map_err(|_| write_error(rw.lba))?;
        }
        if self.needs_flush(rw.fua) {
            self.flush(rw.lba)?;
        }
        Ok(Bytes::new())
    }

    /// Compare the medium from `lba` for `blocks` blocks against what
    /// `expected(offset, len)` yields, in bounded chunks; report the byte
    /// offset of the first difference as a MISCOMPARE. With `expected`
    /// `None` the medium is only read (medium verification).
    fn compare_medium(
        &self,
        lba: u64,
        blocks: u64,
        expected: Option<Comparator<'_>>,
    ) -> Result<(), Sense> {
        let total = blocks * self.block_size;
        let chunk = IO_CHUNK_BYTES.max(self.block_size).min(total.max(1));
        let mut buf = vec![0u8; usize::try_from(chunk).unwrap_or(0)];
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(chunk) as usize;
            let at_lba = lba + done / self.block_size;
            self.backend
                .read_at(&mut buf[..n], self.offset(lba) + done)
                .map_err(|_| read_error(at_lba))?;
            if let Some(cmp) = expected {
                if let Some(i) = cmp(done as usize, &buf[..n]) {
                    return Err(miscompare(done + i as u64));
                }
            }
            done += n as u64;
        }
        Ok(())
    }

    fn verify(&self, v: VerifyParams, data_out: &[u8]) -> CmdResult {
        self.check_transfer(v.blocks, 0)?;
        self.check_range(v.lba, u64::from(v.blocks))?;
        let blocks = u64::from(v.blocks);
        match v.bytchk {
            0 => self.compare_medium(v.lba, blocks, None)?,
            3 => {
                let bs = self.config.block_size as usize;
                let pattern = data_out
                    .get(..bs)
                    .ok_or(Sense::illegal_request(sense::PARAMETER_LIST_LENGTH_ERROR))?;
                let cmp = |_at: usize, got: &[u8]| {
                    got.chunks(bs)
                        .enumerate()
                        .find_map(|(k, blk)| first_difference(blk, pattern).map(|i| k * bs + i))
                };
                self.compare_medium(v.lba, blocks, Some(&cmp))?;
            }
            _ => {
                let want = self.len_of(blocks);
                let expect = data_out
                    .get(..want)
                    .ok_or(Sense::illegal_request(sense::PARAMETER_LIST_LENGTH_ERROR))?;
                let cmp =
                    |at: usize, got: &[u8]| first_difference(got, &expect[at..at + got.len()]);
                self.compare_medium(v.lba, blocks, Some(&cmp))?;
            }
        }
        Ok(Bytes::new())
    }

    fn write_and_verify(&self, v: VerifyParams, data_out: &[u8]) -> CmdResult {
        self.check_transfer(v.blocks, 0)?;
        self.check_range(v.lba, u64::from(v.blocks))?;
        let payload = self.write_payload(v.blocks, data_out);
        if !payload.is_empty() {
            self.backend
                .write_at(payload, self.offset(v.lba))
                .map_err(|_| write_error(v.lba))?;
        }
        // Verification is against the medium, so the data must be there.
        if self.backend.volatile_write_cache() {
            self.flush(v.lba)?;
        }
        if v.bytchk != 0 && !payload.is_empty() {
            let bs = self.block_size;
            let cmp = |at: usize, got: &[u8]| first_difference(got, &payload[at..at + got.len()]);
            self.compare_medium(v.lba, payload.len() as u64 / bs, Some(&cmp))?;
        }
        Ok(Bytes::new())
    }

    fn synchronize_cache(&self, lba: u64, blocks: u32) -> CmdResult {
        // NUMBER OF LOGICAL BLOCKS zero means "through the last LBA".
        if blocks == 0 {
            if lba > self.capacity_blocks() {
                return Err(lba_out_of_range().into());
            }
        } else {
            self.check_range(lba, u64::from(blocks))?;
        }
        self.flush(lba)?;
        Ok(Bytes::new())
    }

    fn write_same(&self, ws: WriteSameParams, data_out: &[u8], ty: CommandType) -> CmdResult {
        if ws.anchor {
            // ANC_SUP is zero: no anchored state.
            return Err(CdbError::field(1, 4).into());
        }
        if ws.unmap && !self.config.thin {
            return Err(CdbError::field(1, 3).into());
        }
        let cap = self.capacity_blocks();
        // WSNZ is zero: zero blocks means from LBA through the last block.
        let blocks = if ws.blocks == 0 {
            if ws.lba > cap {
                return Err(lba_out_of_range().into());
            }
            cap - ws.lba
        } else {
            u64::from(ws.blocks)
        };
        self.check_range(ws.lba, blocks)?;
        let bs = self.config.block_size as usize;
        let zero_block;
        let pattern: &[u8] = if ws.ndob {
            zero_block = vec![0u8; bs];
            &zero_block
        } else {
            if data_out.len() != bs {
                // The Data-Out must be exactly one logical block.
                let byte = if ty == CommandType::WriteSame10 {
                    7
                } else {
                    10
                };
                return Err(Sense::invalid_field_in_cdb(byte, None).into());
            }
            data_out
        };
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        if ws.unmap {
            // SBC-3 5.50: with UNMAP set the device server deallocates the range whatever
            // the pattern (as LIO does, and as libiscsi's UnmapUntilEnd tests expect);
            // LBPRZ tells the initiator the blocks now read as zeroes.
            self.backend
                .unmap(self.offset(ws.lba), blocks * self.block_size)
                .map_err(|_| write_error(ws.lba))?;
        } else {
            let per_chunk = (IO_CHUNK_BYTES / self.block_size).max(1).min(blocks);
            let chunk = pattern.repeat(per_chunk as usize);
            let mut done = 0u64;
            while done < blocks {
                let n = (blocks - done).min(per_chunk);
                let lba = ws.lba + done;
                self.backend
                    .write_at(&chunk[..n as usize * bs], self.offset(lba))
                    .map_err(|_| write_error(lba))?;
                done += n;
            }
        }
        if self.needs_flush(false) {
            self.flush(ws.lba)?;
        }
        Ok(Bytes::new())
    }

    fn compare_and_write(&self, lba: u64, blocks: u8, fua: bool, data_out: &[u8]) -> CmdResult {
        let n = self.len_of(u64::from(blocks));
        // SBC-3 5.2: the Data-Out is exactly the compare data followed by
        // the write data; anything else is a malformed command.
        if data_out.len() != 2 * n {
            return Err(Sense::invalid_field_in_cdb(13, None).into());
        }
        self.check_range(lba, u64::from(blocks))?;
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        let (compare, write) = data_out.split_at(n);
        {
            let _g = self.atomic_rmw.lock().unwrap_or_else(|e| e.into_inner());
            let mut cur = vec![0u8; n];
            self.backend
                .read_at(&mut cur, self.offset(lba))
                .map_err(|_| read_error(lba))?;
            if let Some(i) = first_difference(&cur, compare) {
                return Err(miscompare(i as u64).into());
            }
            self.backend
                .write_at(write, self.offset(lba))
                .map_err(|_| write_error(lba))?;
        }
        if self.needs_flush(fua) {
            self.flush(lba)?;
        }
        Ok(Bytes::new())
    }

    fn unmap(&self, anchor: bool, param_len: u16, data_out: &[u8]) -> CmdResult {
        if !self.config.thin {
            // LBPU is zero: UNMAP is not implemented for a fully
            // provisioned LU.
            return Err(CdbError::InvalidOpcode(crate::cdb::OpCode::UNMAP).into());
        }
        if anchor {
            return Err(CdbError::field(1, 0).into());
        }
        let list = param_list(data_out, u64::from(param_len))?;
        let p = UnmapParams::parse(list)?;
        if p.descriptors.len() > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(ParamError::at(2).into());
        }
        // Validate everything before deallocating anything.
        for (i, &(lba, count)) in p.descriptors.iter().enumerate() {
            if count > MAX_UNMAP_LBA_COUNT {
                return Err(ParamError::at(8 + 16 * i + 8).into());
            }
            self.check_range(lba, u64::from(count))?;
        }
        for &(lba, count) in &p.descriptors {
            if count > 0 {
                self.backend
                    .unmap(self.offset(lba), u64::from(count) * self.block_size)
                    .map_err(|_| write_error(lba))?;
            }
        }
        Ok(Bytes::new())
    }

    fn get_lba_status(&self, lba: u64, alloc_len: u32) -> CmdResult {
        let cap = self.capacity_blocks();
        if lba >= cap {
            return Err(lba_out_of_range().into());
        }
        let room = (alloc_len.saturating_sub(8) / 16) as usize;
        let max = room.clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let mut descriptors = Vec::with_capacity(max);
        let mut at = lba;
        while at < cap && descriptors.len() < max {
            let remaining = (cap - at).min(u64::from(u32::MAX));
            // Without LBPME every LBA is mapped (SBC-3 4.7.1), whatever the
            // backend's allocation looks like.
            let (mapped, run) = if self.config.thin {
                self.backend
                    .map_status(self.offset(at), remaining * self.block_size)
                    .map_err(|_| read_error(at))?
            } else {
                (true, remaining * self.block_size)
            };
            let run_blocks = (run / self.block_size).clamp(1, remaining);
            descriptors.push(LbaStatusDescriptor {
                lba: at,
                blocks: run_blocks as u32,
                status: if mapped {
                    ProvisioningStatus::MAPPED
                } else {
                    ProvisioningStatus::DEALLOCATED
                },
            });
            at += run_blocks;
        }
        Ok(vec_to_bytes(LbaStatus { descriptors }.build(), alloc_len))
    }

    // ---- mode parameters ----

    fn default_mode(&self) -> ModeState {
        ModeState {
            wce: self.backend.volatile_write_cache(),
            d_sense: false,
            swp: false,
        }
    }

    fn apply_mode(&self, st: &mut LuState, m: ModeState) {
        st.mode = m;
        self.wce.store(m.wce, Ordering::Relaxed);
        self.d_sense.store(m.d_sense, Ordering::Relaxed);
        self.swp.store(m.swp, Ordering::Relaxed);
    }

    fn caching_page(&self, m: ModeState) -> CachingPage {
        CachingPage {
            wce: m.wce,
            rcd: false,
        }
    }

    fn control_page(&self, m: ModeState) -> ControlPage {
        ControlPage {
            tst: 0,
            tmf_only: false,
            d_sense: m.d_sense,
            gltsd: true,
            // Commands run concurrently: unrestricted reordering.
            qam: 1,
            qerr: 0,
            ua_intlck_ctrl: 0,
            swp: m.swp,
            tas: false,
            busy_timeout_period: 0xffff,
            extended_self_test_completion_time: 0,
        }
    }

    fn iec_page(&self) -> InformationalExceptionsPage {
        InformationalExceptionsPage {
            dexcpt: true,
            mrie: 0,
            interval_timer: 0,
            report_count: 0,
        }
    }

    /// The pages for page control `pc`: values for current and default,
    /// masks of changeable bits for changeable.
    fn mode_pages(&self, pc: PageControl, page: u8) -> Option<Vec<ModePage>> {
        let m = match pc {
            PageControl::Current => self.lock().mode,
            _ => self.default_mode(),
        };
        let caching = || {
            if pc == PageControl::Changeable {
                CachingPage {
                    wce: self.backend.volatile_write_cache(),
                    rcd: false,
                }
            } else {
                self.caching_page(m)
            }
        };
        let control = || {
            if pc == PageControl::Changeable {
                ControlPage {
                    d_sense: true,
                    swp: true,
                    ..Default::default()
                }
            } else {
                self.control_page(m)
            }
        };
        let iec = || {
            if pc == PageControl::Changeable {
                InformationalExceptionsPage::default()
            } else {
                self.iec_page()
            }
        };
        Some(match page {
            PAGE_ALL => vec![
                ModePage::Caching(caching()),
                ModePage::Control(control()),
                ModePage::InformationalExceptions(iec()),
            ],
            PAGE_CACHING => vec![ModePage::Caching(caching())],
            PAGE_CONTROL => vec![ModePage::Control(control())],
            PAGE_INFORMATIONAL_EXCEPTIONS => vec![ModePage::InformationalExceptions(iec())],
            _ => return None,
        })
    }

    fn mode_sense(&self, p: ModeSenseParams) -> CmdResult {
        if p.pc == PageControl::Saved {
            return Err(Sense::illegal_request(sense::SAVING_PARAMETERS_NOT_SUPPORTED).into());
        }
        if p.subpage != 0 && p.subpage != SUBPAGE_ALL {
            return Err(CdbError::byte(3).into());
        }
        let pages = self.mode_pages(p.pc, p.page).ok_or(CdbError::field(2, 5))?;
        let wp = self.config.read_only || self.swp.load(Ordering::Relaxed);
        let changeable = p.pc == PageControl::Changeable;
        let block_descriptors = if p.dbd {
            Vec::new()
        } else if changeable {
            vec![BlockDescriptor::default()]
        } else {
            vec![BlockDescriptor {
                blocks: self.capacity_blocks(),
                block_len: self.config.block_size,
            }]
        };
        let params = ModeParameters {
            medium_type: 0,
            device_specific: if wp { DSP_WRITE_PROTECT } else { 0 } | DSP_DPOFUA,
            long_lba: p.llbaa,
            block_descriptors,
            pages,
        };
        Ok(vec_to_bytes(params.build(p.ten), u32::from(p.alloc_len)))
    }

    /// MODE SELECT: only changeable bits may differ from the current
    /// values; everything is validated before anything changes, and other
    /// nexuses are told MODE PARAMETERS CHANGED.
    fn mode_select(&self, p: ModeSelectParams, n: &ItNexus<'_>, data_out: &[u8]) -> CmdResult {
        if p.param_len == 0 {
            return Ok(Bytes::new());
        }
        let list = param_list(data_out, u64::from(p.param_len))?;
        let sel = ModeSelectList::parse(list, p.ten)?;
        if !p.pf && !sel.pages.is_empty() {
            // PF=0 would mean vendor-specific pages; we have none.
            return Err(CdbError::field(1, 4).into());
        }
        for &(at, d) in &sel.block_descriptors {
            let blocks_ok = d.blocks == 0
                || d.blocks == self.capacity_blocks()
                || (!sel.long_lba && d.blocks == u64::from(u32::MAX));
            if !blocks_ok {
                return Err(ParamError::at(at).into());
            }
            if d.block_len != self.config.block_size {
                return Err(ParamError::at(at + if sel.long_lba { 12 } else { 5 }).into());
            }
        }
        let mut st = self.lock();
        let mut next = st.mode;
        for page in &sel.pages {
            let b = page.bytes;
            let at = page.offset;
            if b[0] & 0x40 != 0 {
                return Err(ParamError::at_bit(at, 6).into());
            }
            let (current, mask) = match b[0] & 0x3f {
                PAGE_CACHING => (
                    self.caching_page(next).to_bytes().to_vec(),
                    self.caching_changeable().to_bytes().to_vec(),
                ),
                PAGE_CONTROL => (
                    self.control_page(next).to_bytes().to_vec(),
                    ControlPage {
                        d_sense: true,
                        swp: true,
                        ..Default::default()
                    }
                    .to_bytes()
                    .to_vec(),
                ),
                PAGE_INFORMATIONAL_EXCEPTIONS => (
                    self.iec_page().to_bytes().to_vec(),
                    InformationalExceptionsPage::default().to_bytes().to_vec(),
                ),
                _ => return Err(ParamError::at_bit(at, 5).into()),
            };
            if b.len() != current.len() {
                return Err(ParamError::at(at + 1).into());
            }
            // Byte 0's PS bit is reserved on MODE SELECT; ignore it.
            for i in 2..b.len() {
                if (b[i] ^ current[i]) & !mask[i] != 0 {
                    return Err(ParamError::at(at + i).into());
                }
            }
            match b[0] & 0x3f {
                PAGE_CACHING => next.wce = CachingPage::from_bytes(b).wce,
                PAGE_CONTROL => {
                    let c = ControlPage::from_bytes(b);
                    next.d_sense = c.d_sense;
                    next.swp = c.swp;
                }
                _ => {}
            }
        }
        let changed =
            next.wce != st.mode.wce || next.d_sense != st.mode.d_sense || next.swp != st.mode.swp;
        self.apply_mode(&mut st, next);
        if changed {
            st.nexuses
                .broadcast(sense::MODE_PARAMETERS_CHANGED, Some(n));
        }
        Ok(Bytes::new())
    }

    fn caching_changeable(&self) -> CachingPage {
        CachingPage {
            wce: self.backend.volatile_write_cache(),
            rcd: false,
        }
    }

    // ---- ALUA and reservations ----

    fn set_target_port_groups(
        &self,
        n: &ItNexus<'_>,
        param_len: u32,
        data_out: &[u8],
    ) -> CmdResult {
        if !self.ports.mode().explicit() {
            // Explicit ALUA is not offered (TPGS without the explicit bit).
            return Err(CdbError::UnsupportedServiceAction {
                opcode: crate::cdb::OpCode::MAINTENANCE_OUT,
                sa: 0x0a,
            }
            .into());
        }
        let list = param_list(data_out, u64::from(param_len))?;
        if list.is_empty() {
            return Ok(Bytes::new());
        }
        let stpg = SetTargetPortGroups::parse(list)?;
        let gen = self.ports.apply_stpg(&stpg.groups)?;
        // SPC-4 5.15.2.3: every nexus but the requester is told 2a/06.
        self.lock().nexuses.acknowledge_alua(n, gen);
        Ok(Bytes::new())
    }

    fn persistent_reserve_out(
        &self,
        req: &Request<'_>,
        n: &ItNexus<'_>,
        action: PrOutAction,
        scope: u8,
        pr_type: PrType,
        param_len: u32,
    ) -> CmdResult {
        let list = param_list(req.data_out, u64::from(param_len))?;
        let tid = TransportId::parse(&req.nexus.transport_id, 0)
            .map(|(t, _)| t)
            .unwrap_or_else(|_| TransportId::from_initiator_port(n.port));
        let ports: Vec<u16> = self.ports.relative_target_ports().collect();
        let mut uas = Vec::new();
        let mut st = self.lock();
        let r = st
            .pr
            .out(n, &tid, action, scope, pr_type, list, &ports, &mut uas)?;
        st.nexuses.deliver(&uas);
        match r {
            PrStatus::Good => Ok(Bytes::new()),
            PrStatus::Conflict => Err(Failure::Conflict),
        }
    }
}

/// REPORT LUNS for a target: LU-independent, so the transport answers it
/// from its LUN list (and for LUN 0 when no LU is mapped there).
pub fn report_luns(cdb: &[u8], luns: &[Lun]) -> Response {
    let fmt = SenseFormat::Fixed;
    match Command::parse(cdb) {
        Ok(Command::ReportLuns {
            select_report,
            alloc_len,
        }) => match ReportLunsData::for_select(luns, select_report) {
            Some(d) => Response::good(vec_to_bytes(d.build(), alloc_len)),
            None => Response::check_condition(&CdbError::byte(2).sense(), fmt),
        },
        Ok(_) => Response::check_condition(
            &Sense::illegal_request(sense::INVALID_COMMAND_OPERATION_CODE),
            fmt,
        ),
        Err(e) => Response::check_condition(&e.sense(), fmt),
    }
}

/// The response for a command addressed to a LUN with no logical unit
/// (SPC-4 6.6.2): INQUIRY reports peripheral qualifier 011b,
/// REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data, everything
/// else fails with it. REPORT LUNS goes to [`report_luns`] instead.
pub fn lun_not_supported(cdb: &[u8]) -> Response {
    let not_supported = Sense::illegal_request(sense::LOGICAL_UNIT_NOT_SUPPORTED);
    match Command::parse(cdb) {
        Ok(Command::Inquiry {
            evpd: false,
            alloc_len,
            ..
        }) => {
            let inq = StandardInquiry {
                qualifier: QUALIFIER_NOT_CAPABLE,
                device_type: PeripheralType::UNKNOWN,
                version: VERSION_SPC4,
                response_data_format: 2,
                ..Default::default()
            };
            Response::good(vec_to_bytes(inq.build(), u32::from(alloc_len)))
        }
        Ok(Command::RequestSense { desc, alloc_len }) => {
            let fmt = if desc {
                SenseFormat::Descriptor
            } else {
                SenseFormat::Fixed
            };
            let d = not_supported.encode(fmt);
            Response::good(Bytes::copy_from_slice(
                &d[..d.len().min(usize::from(alloc_len))],
            ))
        }
        _ => Response::check_condition(&not_supported, SenseFormat::Fixed),
    }
}

// ---- internals ----

/// FNV-1a: the nexus table is keyed by initiator port strings on every
/// command; SipHash's DoS resistance buys nothing for a table bounded by
/// `MAX_NEXUSES` and keyed by authenticated sessions.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Per-I_T-nexus state.
#[derive(Debug)]
struct NexusSlot {
    rtp: u16,
    /// TargetPorts generation this nexus has been told about.
    alua_gen: u64,
    /// Pending unit attention conditions, reported oldest first.
    ua: Vec<Asc>,
}

impl NexusSlot {
    fn push_ua(&mut self, asc: Asc) {
        // A reset supersedes every older condition (SAM-5 6.3.5).
        if asc.code == sense::POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED.code {
            self.ua.clear();
        }
        if !self.ua.contains(&asc) && self.ua.len() < MAX_PENDING_UAS {
            self.ua.push(asc);
        }
    }

    fn pop_ua(&mut self) -> Option<Asc> {
        if self.ua.is_empty() {
            None
        } else {
            Some(self.ua.remove(0))
        }
    }
}

#[derive(Debug, Default)]
struct NexusTable {
    by_port: HashMap<Box<str>, Vec<NexusSlot>, BuildHasherDefault<Fnv>>,
    count: usize,
}

impl NexusTable {
    /// The slot of `n`, created (with POWER ON/RESET pending) on first
    /// sight. Also turns an unseen ALUA generation into 2a/06.
    fn slot(&mut self, n: &ItNexus<'_>, alua_gen: u64) -> Option<&mut NexusSlot> {
        if !self.by_port.contains_key(n.port) {
            self.make_room();
            self.by_port.insert(n.port.into(), Vec::with_capacity(1));
        }
        let slots = self.by_port.get_mut(n.port)?;
        let i = match slots.iter().position(|s| s.rtp == n.rtp) {
            Some(i) => i,
            None => {
                let mut s = NexusSlot {
                    rtp: n.rtp,
                    alua_gen,
                    ua: Vec::new(),
                };
                s.push_ua(sense::POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED);
                slots.push(s);
                self.count += 1;
                slots.len() - 1
            }
        };
        let s = &mut slots[i];
        if s.alua_gen != alua_gen {
            s.alua_gen = alua_gen;
            s.push_ua(sense::ASYMMETRIC_ACCESS_STATE_CHANGED);
        }
        Some(s)
    }

    /// The nexus caused generation `gen` itself (SET TARGET PORT GROUPS):
    /// it is not told about it, unless it had an older change pending.
    fn acknowledge_alua(&mut self, n: &ItNexus<'_>, gen: u64) {
        if let Some(s) = self
            .by_port
            .get_mut(n.port)
            .and_then(|v| v.iter_mut().find(|s| s.rtp == n.rtp))
        {
            if s.alua_gen.wrapping_add(1) == gen {
                s.alua_gen = gen;
            }
        }
    }

    /// Forget idle nexuses when the table is full.
    fn make_room(&mut self) {
        if self.count < MAX_NEXUSES {
            return;
        }
        let mut removed = 0;
        self.by_port.retain(|_, slots| {
            let before = slots.len();
            slots.retain(|s| !s.ua.is_empty());
            removed += before - slots.len();
            !slots.is_empty()
        });
        self.count -= removed;
        if self.count >= MAX_NEXUSES {
            // Everyone has something pending: drop the lot rather than grow.
            self.by_port.clear();
            self.count = 0;
        }
    }

    fn remove(&mut self, n: &ItNexus<'_>) {
        if let Some(slots) = self.by_port.get_mut(n.port) {
            let before = slots.len();
            slots.retain(|s| s.rtp != n.rtp);
            self.count -= before - slots.len();
            if slots.is_empty() {
                self.by_port.remove(n.port);
            }
        }
    }

    fn for_each(&mut self, mut f: impl FnMut(&str, &mut NexusSlot)) {
        for (port, slots) in self.by_port.iter_mut() {
            for s in slots.iter_mut() {
                f(port, s);
            }
        }
    }

    /// Queue `asc` for every known nexus except `except`.
    fn broadcast(&mut self, asc: Asc, except: Option<&ItNexus<'_>>) {
        self.for_each(|port, s| {
            if except.is_some_and(|e| e.port == port && e.rtp == s.rtp) {
                return;
            }
            s.push_ua(asc);
        });
    }

    fn deliver(&mut self, targets: &[UaTarget]) {
        if targets.is_empty() {
            return;
        }
        self.for_each(|port, s| {
            for t in targets {
                if t.matches(port, s.rtp) {
                    s.push_ua(t.asc);
                }
            }
        });
    }
}

/// Current values of the changeable mode parameters.
#[derive(Clone, Copy, Debug)]
struct ModeState {
    wce: bool,
    d_sense: bool,
    swp: bool,
}

#[derive(Debug)]
struct LuState {
    nexuses: NexusTable,
    pr: PrState,
    mode: ModeState,
}

/// Why a command did not complete with GOOD.
enum Failure {
    Check(Sense),
    Conflict,
    /// Only from a `nowait` read: the backend would have to wait.
    WouldBlock,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Failure {
        Failure::Check(s)
    }
}

impl From<CdbError> for Failure {
    fn from(e: CdbError) -> Failure {
        Failure::Check(e.sense())
    }
}

impl From<ParamError> for Failure {
    fn from(e: ParamError) -> Failure {
        Failure::Check(e.sense())
    }
}

type CmdResult = Result<Bytes, Failure>;

fn lba_out_of_range() -> Sense {
    Sense::illegal_request(sense::LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE)
}

fn read_error(lba: u64) -> Sense {
    Sense::new(SenseKey::MEDIUM_ERROR, sense::UNRECOVERED_READ_ERROR).with_info(lba)
}

fn write_error(lba: u64) -> Sense {
    Sense::new(SenseKey::MEDIUM_ERROR, sense::WRITE_ERROR).with_info(lba)
}

fn miscompare(offset: u64) -> Sense {
    Sense::new(
        SenseKey::MISCOMPARE,
        sense::MISCOMPARE_DURING_VERIFY_OPERATION,
    )
    .with_info(offset)
}

fn vec_to_bytes(v: Vec<u8>, alloc_len: u32) -> Bytes {
    Bytes::from(truncate_to(v, alloc_len))
}

/// The Data-Out bytes holding a parameter list of `param_len` bytes.
fn param_list(data_out: &[u8], param_len: u64) -> Result<&[u8], Sense> {
    let n = usize::try_from(param_len).unwrap_or(usize::MAX);
    data_out
        .get(..n)
        .ok_or(Sense::illegal_request(sense::PARAMETER_LIST_LENGTH_ERROR))
}

/// Given a chunk's offset in the range and its medium bytes, the index of
/// the first byte that differs from what is expected there.
type Comparator<'a> = &'a dyn Fn(usize, &[u8]) -> Option<usize>;

/// Index of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[cfg(test)]
mod tests;
