//! VFIO live migration of an emulated function: the migration features of
//! `VFIO_DEVICE_FEATURE` (`vfio_main.c`: `_MIGRATION`, `_MIG_DEVICE_STATE`,
//! `_MIG_DATA_SIZE`, `_MIG_PRECOPY_INFOv2`) with the kernel's state machine
//! (`vfio_mig_get_next_state`), and the migration data files they return,
//! shaped like a vfio-pci variant driver's (mlx5's, the reference).
//!
//! What it stores: per device, `MigCtl` (the state, the open data
//! session, the PRECOPY_INFOv2 opt-in) behind the device's `mig` lock; per
//! session, the byte stream (`Session`). A device offers migration when
//! its function does
//! ([`PciDevice::migration`](uiommufd_devices::pci::PciDevice::migration)):
//! the DMA engine does, with
//! STOP_COPY and PRE_COPY (no P2P: it cannot tell peer-to-peer requests
//! from others, and the states are optional).
//!
//! The stream, which the user must treat as opaque and move unchanged:
//! a 24-byte header (magic `UMIG`, version 1, the function's PCI identity,
//! checked by the destination), then the device's state as a length and
//! the bytes [`DeviceMigration::save`] gives. In PRE_COPY the header is
//! the *initial data* (`initial_bytes`); the state follows once the device
//! stops (PRE_COPY -> STOP_COPY). The device state is small (about 8 KiB)
//! and read in one go at stop-copy time, so PRE_COPY reports no dirty
//! bytes. Guest memory the device writes is not in the stream: the IOMMU's
//! dirty tracking reports it (`IOMMU_HWPT_GET_DIRTY_BITMAP`).
//!
//! Arcs (the driver side of the FSM; the combinations go through these):
//! - RUNNING -> STOP: the function stops ([`DeviceMigration::stop`]);
//!   STOP -> RUNNING: it runs again.
//! - RUNNING -> PRE_COPY: a saving session starts with the header; the
//!   function keeps running. PRE_COPY -> RUNNING ends it.
//! - PRE_COPY -> STOP_COPY: the function stops, its state joins the stream.
//!   STOP -> STOP_COPY: a new session with header and state.
//!   STOP_COPY -> STOP ends the session.
//! - STOP -> RESUMING: a loading session; RESUMING -> STOP checks what was
//!   written and loads it into the function (`EINVAL`, still RESUMING, for
//!   a stream that is not one whole state of an identical function).
//!
//! A session's file outlives its session: after the session ends, `read`,
//! `write` and `VFIO_MIG_GET_PRECOPY_INFO` on it fail `ENODEV`.
//! `VFIO_DEVICE_RESET` and the device's last close return it to RUNNING.
//!
//! Lock order: `VfioDevice::mig` → a session's state → the function's
//! locks.

use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_abi::vfio::{self as v};
use uiommufd_abi::Errno;
use uiommufd_core::error::{einval, ErrnoExt, Error, Result};
use uiommufd_devices::pci::DeviceMigration;
use uiommufd_devices::PciId;
use uiommufd_memory::user;
use zerocopy::IntoBytes;

use crate::file::{FdHost, File};
use crate::vfio_device::VfioDevice;

/// The migration flags of a function that can be migrated.
const FLAGS: u64 = v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_PRE_COPY;
const MAGIC: &[u8; 4] = b"UMIG";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// What a loading session accepts at most (the state is about 8 KiB).
const MAX_RESUME: usize = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A device's migration state (`mig_state`) and its data session.
pub(crate) struct MigCtl {
    state: u32,
    session: Option<Arc<Session>>,
    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` was set.
    precopy_v2: bool,
}

impl Default for MigCtl {
    fn default() -> Self {
        MigCtl { state: v::VFIO_DEVICE_STATE_RUNNING, session: None, precopy_v2: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Save,
    Resume,
}

/// One data transfer session: the bytes streamed so far (saving) or
/// written so far (loading).
pub(crate) struct Session {
    kind: Kind,
    st: Mutex<SessionState>,
}

struct SessionState {
    buf: Vec<u8>,
    /// Bytes read (saving).
    pos: usize,
    /// The whole state is in `buf` (STOP_COPY): the end of `buf` is the end
    /// of the stream, not a pause.
    complete: bool,
    /// The session ended; its file only answers `ENODEV`.
    ended: bool,
}

impl Session {
    fn new(kind: Kind, buf: Vec<u8>, complete: bool) -> Arc<Session> {
        Arc::new(Session { kind, st: Mutex::new(SessionState { buf, pos: 0, complete, ended: false }) })
    }

    fn end(&self) {
        lock(&self.st).ended = true;
    }
}

/// The header: magic, version, and the identity the destination checks.
fn header(id: &PciId) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    for x in [id.vendor_id, id.device_id, id.subsystem_vendor_id, id.subsystem_id] {
        h.extend_from_slice(&x.to_le_bytes());
    }
    h.extend_from_slice(&id.class_code.to_le_bytes());
    h.extend_from_slice(&[id.revision_id, 0, 0, 0]);
    debug_assert_eq!(h.len(), HEADER_LEN);
    h
}

/// The state section: its length, then the bytes.
fn state_section(m: &dyn DeviceMigration) -> Vec<u8> {
    let state = m.save();
    let mut s = Vec::with_capacity(4 + state.len());
    s.extend_from_slice(&(state.len() as u32).to_le_bytes());
    s.extend_from_slice(&state);
    s
}

/// The device state in a whole stream written to a loading session, if
/// the stream is one: our header with this function's identity, one state
/// section, nothing after.
fn parse_stream<'a>(stream: &'a [u8], id: &PciId) -> Option<&'a [u8]> {
    let (h, rest) = stream.split_at_checked(HEADER_LEN)?;
    if h != header(id).as_slice() {
        return None;
    }
    let (len, state) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    (state.len() == len).then_some(state)
}

/// `vfio_mig_get_next_state`: the next arc from `cur` towards `new` for a
/// device with migration flags `flags` (STOP_COPY, optionally P2P and
/// PRE_COPY). `EINVAL` for a state the device does not have or an arc
/// that is not allowed (STOP_COPY -> PRE_COPY, anything -> ERROR).
pub(crate) fn next_state(flags: u64, cur: u32, new: u32) -> Result<u32> {
    use v::{
        VFIO_DEVICE_STATE_ERROR as ERROR, VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
        VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P, VFIO_DEVICE_STATE_RESUMING as RESUMING,
        VFIO_DEVICE_STATE_RUNNING as RUNNING, VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
        VFIO_DEVICE_STATE_STOP as STOP, VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
    };
    // The kernel's vfio_from_fsm_table, indexed [cur][new], states in
    // their uAPI order (ERROR, STOP, RUNNING, STOP_COPY, RESUMING,
    // RUNNING_P2P, PRE_COPY, PRE_COPY_P2P).
    const TABLE: [[u32; 8]; 8] = [
        [ERROR; 8],
        [ERROR, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P],
        [ERROR, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P],
        [ERROR, STOP, STOP, STOP_COPY, STOP, STOP, ERROR, ERROR],
        [ERROR, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP],
        [ERROR, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P],
        [ERROR, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P],
        [ERROR, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P],
    ];
    let needs = |s: u32| -> u64 {
        match s {
            ERROR => u64::MAX,
            PRE_COPY => v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_PRE_COPY,
            PRE_COPY_P2P => v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_P2P | v::VFIO_MIGRATION_PRE_COPY,
            RUNNING_P2P => v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_P2P,
            _ => v::VFIO_MIGRATION_STOP_COPY,
        }
    };
    let has = |s: u32| needs(s) & flags == needs(s);
    if cur as usize >= TABLE.len() || !has(cur) || new as usize >= TABLE.len() || !has(new) {
        return Err(einval("a migration state the device does not have"));
    }
    // Arcs through optional states the device lacks are skipped.
    let mut next = TABLE[cur as usize][new as usize];
    while next != ERROR && !has(next) {
        next = TABLE[next as usize][new as usize];
    }
    if next == ERROR {
        return Err(einval("no such migration arc"));
    }
    Ok(next)
}

impl VfioDevice {
    fn mig_ctl(&self) -> MutexGuard<'_, MigCtl> {
        lock(self.mig())
    }

    /// Back to RUNNING, the session ended: what `VFIO_DEVICE_RESET` and
    /// the last close do to the migration state.
    pub(crate) fn migration_reset(&self) {
        let mut ctl = self.mig_ctl();
        if let Some(s) = ctl.session.take() {
            s.end();
        }
        if ctl.state != v::VFIO_DEVICE_STATE_RUNNING {
            if let Some(m) = self.pci().migration() {
                m.run();
            }
            ctl.state = v::VFIO_DEVICE_STATE_RUNNING;
        }
    }

    /// One arc of the FSM (the driver's `step_device_state`): the new
    /// session's file for the arcs that start one.
    fn step(&self, ctl: &mut MigCtl, m: &dyn DeviceMigration, next: u32) -> Result<Option<Arc<Session>>> {
        use v::{
            VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY, VFIO_DEVICE_STATE_RESUMING as RESUMING,
            VFIO_DEVICE_STATE_RUNNING as RUNNING, VFIO_DEVICE_STATE_STOP as STOP,
            VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
        };
        let end_session = |ctl: &mut MigCtl| {
            if let Some(s) = ctl.session.take() {
                s.end();
            }
        };
        match (ctl.state, next) {
            (RUNNING, STOP) => m.stop(),
            (STOP, RUNNING) => m.run(),
            (RUNNING, PRE_COPY) => {
                let s = Session::new(Kind::Save, header(&self.pci().id()), false);
                ctl.session = Some(Arc::clone(&s));
                return Ok(Some(s));
            }
            (PRE_COPY, RUNNING) => end_session(ctl),
            (PRE_COPY, STOP_COPY) => {
                m.stop();
                let s = ctl.session.as_ref().ok_or(einval("no saving session"))?;
                let mut st = lock(&s.st);
                st.buf.extend_from_slice(&state_section(m));
                st.complete = true;
            }
            (STOP, STOP_COPY) => {
                let mut buf = header(&self.pci().id());
                buf.extend_from_slice(&state_section(m));
                let s = Session::new(Kind::Save, buf, true);
                ctl.session = Some(Arc::clone(&s));
                return Ok(Some(s));
            }
            (STOP_COPY, STOP) => end_session(ctl),
            (STOP, RESUMING) => {
                let s = Session::new(Kind::Resume, Vec::new(), false);
                ctl.session = Some(Arc::clone(&s));
                return Ok(Some(s));
            }
            (RESUMING, STOP) => {
                let s = ctl.session.as_ref().ok_or(einval("no loading session"))?;
                {
                    let st = lock(&s.st);
                    let state = parse_stream(&st.buf, &self.pci().id())
                        .ok_or(einval("the data written is not one whole state of this function"))?;
                    m.load(state).ctx("loading the device state")?;
                }
                end_session(ctl);
            }
            _ => return Err(einval("no such migration arc")),
        }
        Ok(None)
    }
}

/// `vfio_check_feature`: 1 to do the GET or SET, 0 for a PROBE that
/// succeeds.
fn check_feature(flags: u32, argsz: usize, supported: u32, minsz: usize) -> Result<bool> {
    let get_set = v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_SET;
    if flags & get_set & !supported != 0 {
        return Err(einval("GET or SET is not supported by this feature"));
    }
    if flags & v::VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Ok(false);
    }
    if flags & get_set == 0 {
        return Err(einval("neither GET nor SET"));
    }
    if argsz < minsz {
        return Err(einval("argsz does not cover the feature's data"));
    }
    Ok(true)
}

fn no_migration() -> Error {
    Error::new(Errno::ENOTTY, "the device cannot be migrated")
}

/// The migration features of `VFIO_DEVICE_FEATURE` (`feature` is the
/// index, `flags` the whole flags word, `data` the user address of
/// `data[]` and `argsz` the bytes there). `None`: not a migration feature.
pub(crate) fn feature(
    dev: &Arc<VfioDevice>,
    host: &dyn FdHost,
    feature: u32,
    flags: u32,
    data: u64,
    argsz: usize,
) -> Option<Result<i32>> {
    let mig = dev.pci().migration();
    let mig_flags = if mig.is_some() { FLAGS } else { 0 };
    Some(match feature {
        v::VFIO_DEVICE_FEATURE_MIGRATION => (|| {
            mig.ok_or_else(no_migration)?;
            if !check_feature(flags, argsz, v::VFIO_DEVICE_FEATURE_GET, 8)? {
                return Ok(0);
            }
            let out = v::VfioDeviceFeatureMigration { flags: mig_flags };
            user::copy_to_user(data, out.as_bytes()).ctx("writing the flags")?;
            Ok(0)
        })(),
        v::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => (|| {
            let m = mig.ok_or_else(no_migration)?;
            let get_set = v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_SET;
            if !check_feature(flags, argsz, get_set, 8)? {
                return Ok(0);
            }
            let mut arg = v::VfioDeviceFeatureMigState::default();
            user::copy_from_user(arg.as_mut_bytes(), data).ctx("reading the state")?;
            if flags & v::VFIO_DEVICE_FEATURE_GET != 0 {
                arg.device_state = dev.mig_ctl().state;
                arg.data_fd = -1;
                user::copy_to_user(data, arg.as_bytes()).ctx("writing the state")?;
                return Ok(0);
            }
            set_state(dev, host, m, mig_flags, arg, data)
        })(),
        v::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => (|| {
            let m = mig.ok_or_else(no_migration)?;
            if !check_feature(flags, argsz, v::VFIO_DEVICE_FEATURE_GET, 8)? {
                return Ok(0);
            }
            let out = v::VfioDeviceFeatureMigDataSize { stop_copy_length: (HEADER_LEN + 4 + m.saved_size()) as u64 };
            user::copy_to_user(data, out.as_bytes()).ctx("writing the size")?;
            Ok(0)
        })(),
        v::VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 => (|| {
            // Checked before the feature's flags, as the kernel does.
            if mig_flags & v::VFIO_MIGRATION_PRE_COPY == 0 {
                return Err(einval("the device has no PRE_COPY"));
            }
            if check_feature(flags, argsz, v::VFIO_DEVICE_FEATURE_SET, 0)? {
                dev.mig_ctl().precopy_v2 = true;
            }
            Ok(0)
        })(),
        _ => return None,
    })
}

/// `VFIO_DEVICE_FEATURE_SET` of `MIG_DEVICE_STATE`: step until the
/// requested state (the driver's `set_device_state`), then hand out the
/// final arc's session file. The reply carries `data_fd` = -1 unless a
/// file was made, also when a step fails.
fn set_state(
    dev: &Arc<VfioDevice>,
    host: &dyn FdHost,
    m: &dyn DeviceMigration,
    mig_flags: u64,
    mut arg: v::VfioDeviceFeatureMigState,
    data: u64,
) -> Result<i32> {
    let new = arg.device_state;
    let made = {
        let mut ctl = dev.mig_ctl();
        let mut made: Result<Option<Arc<Session>>> = Ok(None);
        while ctl.state != new {
            let next = match next_state(mig_flags, ctl.state, new) {
                Ok(n) => n,
                Err(e) => {
                    made = Err(e);
                    break;
                }
            };
            match dev.step(&mut ctl, m, next) {
                Ok(s) => {
                    ctl.state = next;
                    made = Ok(s);
                    if made.as_ref().is_ok_and(|s| s.is_some()) && next != new {
                        // Only the last arc may start a session.
                        made = Err(einval("a session started before the end of the arc"));
                        break;
                    }
                }
                Err(e) => {
                    made = Err(e);
                    break;
                }
            }
        }
        made
    };
    match made {
        Ok(Some(session)) => {
            let file = File::VfioMigration(MigrationFile { session, dev: Arc::clone(dev) });
            let fd = host.install(Arc::new(file), true).map_err(|e| Error::new(e, "installing the data file"))?;
            arg.data_fd = fd;
            if let Err(e) = user::copy_to_user(data, arg.as_bytes()) {
                host.uninstall(fd);
                return Err(Error::new(e, "writing the data descriptor"));
            }
            Ok(0)
        }
        other => {
            arg.data_fd = -1;
            user::copy_to_user(data, arg.as_bytes()).ctx("writing the state")?;
            other.map(|_| 0)
        }
    }
}

/// A migration data file (`data_fd`): `read` while saving, `write` while
/// loading, `VFIO_MIG_GET_PRECOPY_INFO`; no file position (`pread` and
/// `pwrite` are `ESPIPE`).
pub struct MigrationFile {
    session: Arc<Session>,
    dev: Arc<VfioDevice>,
}

impl MigrationFile {
    /// A saving session's file (read), not a loading one's (written).
    pub fn saving(&self) -> bool {
        self.session.kind == Kind::Save
    }

    /// `read(2)` of up to `count` bytes into user memory at `buf`: the next
    /// bytes of the stream; in PRE_COPY past the initial data `ENOMSG` (a
    /// pause: more may come once the device stops); 0 at the end of a
    /// whole state.
    pub fn read(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize> {
        if pos.is_some() {
            return Err(Error::new(Errno::ESPIPE, "the data file has no position"));
        }
        if self.session.kind != Kind::Save {
            return Err(einval("a loading session's file is written, not read"));
        }
        let mut st = lock(&self.session.st);
        if st.ended {
            return Err(Error::new(Errno::ENODEV, "the migration session ended"));
        }
        let left = st.buf.len() - st.pos;
        if left == 0 {
            if st.complete {
                return Ok(0);
            }
            return Err(Error::new(Errno::ENOMSG, "no more pre-copy data for now"));
        }
        let n = left.min(count);
        user::copy_to_user(buf, &st.buf[st.pos..st.pos + n]).ctx("writing the data")?;
        st.pos += n;
        Ok(n)
    }

    /// `write(2)` of `count` bytes from user memory at `buf`: appended to
    /// the state being loaded.
    pub fn write(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize> {
        if pos.is_some() {
            return Err(Error::new(Errno::ESPIPE, "the data file has no position"));
        }
        if self.session.kind != Kind::Resume {
            return Err(einval("a saving session's file is read, not written"));
        }
        let mut st = lock(&self.session.st);
        if st.ended {
            return Err(Error::new(Errno::ENODEV, "the migration session ended"));
        }
        if st.buf.len().saturating_add(count) > MAX_RESUME {
            return Err(Error::new(Errno::EFBIG, "more data than a device state"));
        }
        let at = st.buf.len();
        st.buf.resize(at + count, 0);
        if let Err(e) = user::copy_from_user(&mut st.buf[at..], buf) {
            st.buf.truncate(at);
            return Err(Error::new(e, "reading the data"));
        }
        Ok(count)
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO` (`vfio_check_precopy_ioctl` and the
    /// driver's answer): in PRE_COPY, the initial bytes not read yet, and
    /// no dirty bytes (the state is read whole at stop-copy time).
    pub fn ioctl(&self, request: u64, arg: u64) -> Result<i32> {
        if request as u32 != v::VFIO_MIG_GET_PRECOPY_INFO {
            return Err(Error::new(Errno::ENOTTY, "unknown migration data file command"));
        }
        let minsz = core::mem::size_of::<v::VfioPrecopyInfo>();
        let mut info = v::VfioPrecopyInfo::default();
        user::copy_from_user(info.as_mut_bytes(), arg).ctx("reading the argument")?;
        if (info.argsz as usize) < minsz {
            return Err(einval("argsz is below the mandatory fields"));
        }
        let ctl = self.dev.mig_ctl();
        if ctl.precopy_v2 {
            info.flags = 0;
        }
        if !matches!(ctl.state, v::VFIO_DEVICE_STATE_PRE_COPY | v::VFIO_DEVICE_STATE_PRE_COPY_P2P) {
            return Err(einval("not in a PRE_COPY state"));
        }
        let st = lock(&self.session.st);
        if st.ended {
            return Err(Error::new(Errno::ENODEV, "the migration session ended"));
        }
        info.initial_bytes = (st.buf.len() - st.pos) as u64;
        info.dirty_bytes = 0;
        user::copy_to_user(arg, info.as_bytes()).ctx("writing the reply")?;
        Ok(0)
    }
}

/// The C name of a migration data file request, for traces.
pub fn ioctl_name(cmd: u32) -> Option<&'static str> {
    (cmd == v::VFIO_MIG_GET_PRECOPY_INFO).then_some("VFIO_MIG_GET_PRECOPY_INFO")
}
