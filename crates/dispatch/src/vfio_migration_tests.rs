//! VFIO migration on a DMA engine's device file, as QEMU drives it: the
//! features' checks (`vfio_check_feature`'s errnos), the state machine
//! (combination arcs, states the device lacks), the data files (PRE_COPY's
//! initial bytes and `ENOMSG`, STOP_COPY's end of stream, `ESPIPE`,
//! `ENODEV` once the session ended), and a state moved from one device to
//! another through them.

use uiommufd_abi::vfio::{self as v};
use uiommufd_abi::Errno;
use uiommufd_devices::dma_engine::regs;
use zerocopy::IntoBytes;

use crate::vfio_device_tests::Env;
use crate::vfio_migration::next_state;

const BAR0: u64 = 0;
const GET: u32 = v::VFIO_DEVICE_FEATURE_GET;
const SET: u32 = v::VFIO_DEVICE_FEATURE_SET;
const PROBE: u32 = v::VFIO_DEVICE_FEATURE_PROBE;
use v::{
    VFIO_DEVICE_STATE_ERROR as ERROR, VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
    VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P, VFIO_DEVICE_STATE_RESUMING as RESUMING,
    VFIO_DEVICE_STATE_RUNNING as RUNNING, VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P, VFIO_DEVICE_STATE_STOP as STOP,
    VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
};

/// A `vfio_device_feature` header followed by `data`, as one buffer.
fn feature_buf(argsz_data: usize, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut b = v::VfioDeviceFeature { argsz: (8 + argsz_data) as u32, flags }.as_bytes().to_vec();
    b.extend_from_slice(data);
    b.resize(8 + data.len().max(argsz_data), 0);
    b
}

impl Env {
    fn feature(&self, fd: i32, flags: u32, data: &mut Vec<u8>, argsz_data: usize) -> Result<i32, Errno> {
        let mut b = feature_buf(argsz_data, flags, data);
        let r = self.ioctl(fd, v::VFIO_DEVICE_FEATURE, b.as_mut_slice());
        data.clear();
        data.extend_from_slice(&b[8..]);
        r
    }

    /// SET `MIG_DEVICE_STATE`: the result and the `data_fd` written back.
    fn set_state(&self, fd: i32, state: u32) -> (Result<i32, Errno>, i32) {
        let mut d = v::VfioDeviceFeatureMigState { device_state: state, data_fd: 77 }.as_bytes().to_vec();
        let r = self.feature(fd, SET | v::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &mut d, 8);
        (r, i32::from_ne_bytes(d[4..8].try_into().unwrap()))
    }

    fn state(&self, fd: i32) -> u32 {
        let mut d = vec![0u8; 8];
        self.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &mut d, 8).unwrap();
        assert_eq!(i32::from_ne_bytes(d[4..8].try_into().unwrap()), -1, "GET returns no descriptor");
        u32::from_ne_bytes(d[..4].try_into().unwrap())
    }

    fn read_data(&self, fd: i32, len: usize) -> Result<Vec<u8>, Errno> {
        let mut b = vec![0u8; len];
        let n = self.file(fd).read(b.as_mut_ptr() as u64, len, None).map_err(|e| e.errno)?;
        b.truncate(n);
        Ok(b)
    }

    fn precopy_info(&self, fd: i32) -> Result<(u64, u64), Errno> {
        let mut i = v::VfioPrecopyInfo { argsz: 24, ..Default::default() };
        self.ioctl(fd, v::VFIO_MIG_GET_PRECOPY_INFO, &mut i)?;
        Ok((i.initial_bytes, i.dirty_bytes))
    }

    /// A bound device file with Memory Space on and the ring registers set.
    fn migratable(&self) -> i32 {
        let fd = self.open();
        self.bind(fd).unwrap();
        self.enable_function(fd);
        self.write64(fd, BAR0 + regs::REG_RING_BASE, 0x4_0000);
        self.write32(fd, BAR0 + regs::REG_RING_SIZE, 16);
        fd
    }
}

#[test]
fn the_fsm_is_the_kernels() {
    let flags = v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_PRE_COPY;
    // Combination arcs skip the P2P states this device lacks.
    assert_eq!(next_state(flags, RUNNING, STOP), Ok(STOP));
    assert_eq!(next_state(flags, RUNNING, STOP_COPY), Ok(STOP));
    assert_eq!(next_state(flags, STOP, STOP_COPY), Ok(STOP_COPY));
    assert_eq!(next_state(flags, RUNNING, RESUMING), Ok(STOP));
    assert_eq!(next_state(flags, PRE_COPY, STOP_COPY), Ok(STOP_COPY));
    assert_eq!(next_state(flags, PRE_COPY, STOP), Ok(RUNNING));
    assert_eq!(next_state(flags, RESUMING, RUNNING), Ok(STOP));
    assert_eq!(next_state(flags, STOP_COPY, RUNNING), Ok(STOP));
    // Not allowed, or not a state of this device.
    let einval = |r: Result<u32, crate::Error>| r.map_err(|e| e.errno);
    assert_eq!(einval(next_state(flags, STOP_COPY, PRE_COPY)), Err(Errno::EINVAL));
    assert_eq!(einval(next_state(flags, RUNNING, ERROR)), Err(Errno::EINVAL));
    assert_eq!(einval(next_state(flags, RUNNING, RUNNING_P2P)), Err(Errno::EINVAL));
    assert_eq!(einval(next_state(flags, RUNNING, PRE_COPY_P2P)), Err(Errno::EINVAL));
    assert_eq!(einval(next_state(flags, RUNNING, 8)), Err(Errno::EINVAL));
    // Without PRE_COPY, its arcs are gone; with P2P, RUNNING -> STOP
    // passes through RUNNING_P2P.
    assert_eq!(einval(next_state(v::VFIO_MIGRATION_STOP_COPY, RUNNING, PRE_COPY)), Err(Errno::EINVAL));
    let all = flags | v::VFIO_MIGRATION_P2P;
    assert_eq!(next_state(all, RUNNING, STOP), Ok(RUNNING_P2P));
    assert_eq!(next_state(all, PRE_COPY, STOP_COPY), Ok(PRE_COPY_P2P));
}

#[test]
fn features_check_flags_and_sizes() {
    let env = Env::new();
    let fd = env.open();
    let mut d = vec![0u8; 8];
    assert_eq!(env.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 8), Err(Errno::EINVAL), "unbound");
    env.bind(fd).unwrap();
    assert_eq!(env.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 8), Ok(0));
    assert_eq!(
        u64::from_ne_bytes(d[..8].try_into().unwrap()),
        v::VFIO_MIGRATION_STOP_COPY | v::VFIO_MIGRATION_PRE_COPY
    );
    assert_eq!(env.feature(fd, SET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 8), Err(Errno::EINVAL), "GET only");
    assert_eq!(env.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 7), Err(Errno::EINVAL), "argsz");
    assert_eq!(env.feature(fd, v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 8), Err(Errno::EINVAL), "neither");
    assert_eq!(env.feature(fd, PROBE | GET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 0), Ok(0));
    assert_eq!(env.feature(fd, PROBE | SET | v::VFIO_DEVICE_FEATURE_MIGRATION, &mut d, 0), Err(Errno::EINVAL));
    assert_eq!(env.feature(fd, PROBE | GET | SET | v::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &mut d, 0), Ok(0));

    let mut size = vec![0u8; 8];
    assert_eq!(env.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &mut size, 8), Ok(0));
    let stop_copy_length = u64::from_ne_bytes(size[..8].try_into().unwrap());
    assert!(stop_copy_length > regs::BAR0_SIZE + 4096, "registers and config space at least: {stop_copy_length}");
    assert_eq!(env.feature(fd, SET | v::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &mut size, 8), Err(Errno::EINVAL));

    let mut none = Vec::new();
    assert_eq!(env.feature(fd, SET | v::VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, &mut none, 0), Ok(0));
    assert_eq!(env.feature(fd, GET | v::VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, &mut none, 0), Err(Errno::EINVAL));

    // States: the current one; a refused SET leaves it and says data_fd -1.
    assert_eq!(env.state(fd), RUNNING);
    for bad in [ERROR, RUNNING_P2P, PRE_COPY_P2P, 8, u32::MAX] {
        assert_eq!(env.set_state(fd, bad), (Err(Errno::EINVAL), -1), "state {bad}");
        assert_eq!(env.state(fd), RUNNING);
    }
    assert_eq!(env.set_state(fd, STOP), (Ok(0), -1));
    assert_eq!(env.state(fd), STOP);
    assert_eq!(env.set_state(fd, STOP), (Ok(0), -1), "already there");
    assert_eq!(env.set_state(fd, RUNNING), (Ok(0), -1));
}

#[test]
fn a_state_moves_from_one_device_to_another() {
    let src = Env::new();
    let sfd = src.migratable();
    // RUNNING -> PRE_COPY: a session with the 24 initial bytes.
    let (r, data) = src.set_state(sfd, PRE_COPY);
    assert_eq!(r, Ok(0));
    assert!(data >= 0);
    assert_eq!(src.precopy_info(data), Ok((24, 0)));
    let mut b = [0u8; 8];
    assert_eq!(src.file(data).read(b.as_mut_ptr() as u64, 8, Some(0)).unwrap_err().errno, Errno::ESPIPE);
    assert_eq!(src.file(data).write(b.as_ptr() as u64, 8, None).unwrap_err().errno, Errno::EINVAL);
    let mut stream = src.read_data(data, 10).unwrap();
    assert_eq!(src.precopy_info(data), Ok((14, 0)));
    stream.extend(src.read_data(data, 1 << 20).unwrap());
    assert_eq!(stream.len(), 24);
    assert_eq!(src.read_data(data, 64), Err(Errno::ENOMSG), "a pause in PRE_COPY, not the end");
    let mut short = v::VfioPrecopyInfo { argsz: 23, ..Default::default() };
    assert_eq!(src.ioctl(data, v::VFIO_MIG_GET_PRECOPY_INFO, &mut short), Err(Errno::EINVAL));
    assert_eq!(src.raw(data, v::VFIO_DEVICE_FEATURE, 0), Err(Errno::ENOTTY));

    // PRE_COPY -> STOP_COPY: the same session goes on with the state.
    assert_eq!(src.set_state(sfd, STOP_COPY), (Ok(0), -1));
    assert_eq!(src.precopy_info(data), Err(Errno::EINVAL), "only in PRE_COPY");
    stream.extend(src.read_data(data, 1 << 20).unwrap());
    assert_eq!(src.read_data(data, 64), Ok(vec![]), "the end of the stream");
    let mut size = vec![0u8; 8];
    src.feature(sfd, GET | v::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &mut size, 8).unwrap();
    assert_eq!(stream.len() as u64, u64::from_ne_bytes(size[..8].try_into().unwrap()));
    assert_eq!(src.set_state(sfd, STOP), (Ok(0), -1));
    assert_eq!(src.read_data(data, 64), Err(Errno::ENODEV), "the session ended");

    // The destination: RUNNING -> RESUMING goes through STOP.
    let dst = Env::new();
    let dfd = dst.migratable();
    dst.write64(dfd, BAR0 + regs::REG_RING_BASE, 0);
    let (r, rdata) = dst.set_state(dfd, RESUMING);
    assert_eq!(r, Ok(0));
    assert_eq!(dst.read_data(rdata, 8), Err(Errno::EINVAL), "written, not read");
    // In pieces, as QEMU may cut them.
    for piece in stream.chunks(1000) {
        assert_eq!(dst.file(rdata).write(piece.as_ptr() as u64, piece.len(), None).unwrap(), piece.len());
    }
    assert_eq!(dst.set_state(dfd, RUNNING), (Ok(0), -1));
    assert_eq!(dst.read32(dfd, BAR0 + regs::REG_RING_SIZE), 16);
    assert_eq!(dst.read32(dfd, BAR0 + regs::REG_RING_BASE), 0x4_0000, "the source's registers");
    assert_eq!(dst.file(rdata).write(stream.as_ptr() as u64, 8, None).unwrap_err().errno, Errno::ENODEV);

    // STOP -> STOP_COPY directly: a new session with the whole stream.
    assert_eq!(src.set_state(sfd, STOP), (Ok(0), -1));
    let (r, again) = src.set_state(sfd, STOP_COPY);
    assert_eq!(r, Ok(0));
    assert_eq!(src.read_data(again, 1 << 20).unwrap().len(), stream.len());
    assert_eq!(src.read_data(again, 1), Ok(vec![]));
}

#[test]
fn a_bad_stream_is_refused_and_a_reset_ends_the_session() {
    let env = Env::new();
    let fd = env.migratable();
    let other = Env::new();
    let ofd = other.migratable();
    let (_, od) = other.set_state(ofd, STOP_COPY);
    let good = other.read_data(od, 1 << 20).unwrap();

    for bad in [&good[..good.len() - 1], &[good.as_slice(), &[0]].concat()[..], &good[1..], b"UMIG".as_slice()] {
        assert_eq!(env.set_state(fd, RESUMING).0, Ok(0));
        assert_eq!(env.state(fd), RESUMING);
        // The file of this session is the newest descriptor.
        let dfd = env.fds_newest();
        env.file(dfd).write(bad.as_ptr() as u64, bad.len(), None).unwrap();
        assert_eq!(env.set_state(fd, STOP), (Err(Errno::EINVAL), -1));
        assert_eq!(env.state(fd), RESUMING, "still resuming");
        // VFIO_DEVICE_RESET: back to RUNNING, the session's file is dead.
        assert_eq!(env.raw(fd, v::VFIO_DEVICE_RESET, 0), Ok(0));
        assert_eq!(env.state(fd), RUNNING);
        assert_eq!(env.file(dfd).write(good.as_ptr() as u64, 8, None).unwrap_err().errno, Errno::ENODEV);
    }
    // A whole state of an identical function is taken.
    assert_eq!(env.set_state(fd, RESUMING).0, Ok(0));
    let dfd = env.fds_newest();
    env.file(dfd).write(good.as_ptr() as u64, good.len(), None).unwrap();
    assert_eq!(env.set_state(fd, RUNNING), (Ok(0), -1));
}

impl Env {
    /// The highest descriptor number in use (the one made last).
    fn fds_newest(&self) -> i32 {
        (1000..1100).rev().find(|&fd| crate::FdHost::get(&self.fds, fd).is_some()).unwrap()
    }
}
