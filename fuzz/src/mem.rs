//! Memory the targets own: an arena of pages for buffers and commands,
//! and one page with no access at all after it.

pub(crate) const PS: u64 = 4096;

pub(crate) struct Arena {
    pub base: u64,
    pages: u64,
}

impl Arena {
    pub fn new(pages: u64) -> Arena {
        let len = (pages + 1) * PS;
        // SAFETY: a fresh anonymous mapping owned by the arena.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of the arena");
        let base = base as u64;
        // SAFETY: the last page of our own mapping.
        let rc = unsafe { libc::mprotect((base + pages * PS) as *mut libc::c_void, PS as usize, libc::PROT_NONE) };
        assert_eq!(rc, 0);
        Arena { base, pages }
    }

    /// The page with no access.
    pub fn no_access(&self) -> u64 {
        self.base + self.pages * PS
    }

    /// Copy `bytes` to `at`, inside the arena.
    pub fn put(&self, at: u64, bytes: &[u8]) {
        assert!(at >= self.base && at + bytes.len() as u64 <= self.no_access());
        // SAFETY: checked just above to lie inside our read-write pages;
        // no engine call runs on this thread meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
    }

    /// `len` bytes at `at`, inside the arena.
    pub fn get(&self, at: u64, len: usize) -> Vec<u8> {
        assert!(at >= self.base && at + len as u64 <= self.no_access());
        let mut v = vec![0u8; len];
        // SAFETY: as in `put`.
        unsafe { std::ptr::copy_nonoverlapping(at as *const u8, v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every user of it is gone.
        unsafe { libc::munmap(self.base as *mut libc::c_void, ((self.pages + 1) * PS) as usize) };
    }
}

/// A command struct being built: little-endian fields at byte offsets.
pub(crate) struct Cmd(pub Vec<u8>);

impl Cmd {
    /// `len` zero bytes with the leading `u32 size` set to `len`.
    pub fn sized(len: usize) -> Cmd {
        let mut c = Cmd(vec![0; len]);
        c.u32(0, len as u32);
        c
    }

    pub fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
