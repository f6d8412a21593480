//! `UIOMMUFD_TRACE=1`: one line on stderr per call on a served descriptor;
//! with `UIOMMUFD_TRACE_FILE=PATH`, appended to that file instead.
//!
//! Lines are formatted into a stack buffer and written with one `write(2)`
//! so that lines from concurrent threads (and processes) do not interleave.
//! The file is opened for each line and closed again: the program never
//! sees a descriptor of ours, whatever it closes or checks.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on

pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("UIOMMUFD_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Write one trace line (a newline is added).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut buf = [0u8; 512];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = cur.write_fmt(format_args!("uiommufd[{}]: {}\n", std::process::id(), args));
    let n = cur.position() as usize;
    // A truncated line still ends with a newline.
    if n == buf.len() {
        buf[n - 1] = b'\n';
    }
    match trace_file() {
        Some(path) => {
            let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
            // SAFETY: a NUL-terminated path we own; the next `open` is
            // libc's, not ours.
            let fd = unsafe { crate::real::open(path.as_ptr(), flags, 0o644) };
            if fd >= 0 {
                // SAFETY: writing bytes we own to the descriptor we opened,
                // then closing it (libc's close: it was never ours to serve).
                unsafe {
                    libc::write(fd, buf.as_ptr().cast(), n);
                    crate::real::close(fd);
                }
            }
        }
        None => {
            // SAFETY: writing bytes we own to stderr.
            unsafe { libc::write(2, buf.as_ptr().cast(), n) };
        }
    }
}

/// `UIOMMUFD_TRACE_FILE`, read once.
fn trace_file() -> Option<&'static std::ffi::CStr> {
    static FILE: std::sync::OnceLock<Option<std::ffi::CString>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let v = std::env::var_os("UIOMMUFD_TRACE_FILE").filter(|v| !v.is_empty())?;
        std::ffi::CString::new(v.into_encoded_bytes()).ok()
    })
    .as_deref()
}
