//! `UIOMMUFD_TRACE=1`: one line on stderr per call on a served descriptor.
//!
//! Lines are formatted into a stack buffer and written with one `write(2)`
//! so that lines from concurrent threads do not interleave.

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
    // SAFETY: writing bytes we own to stderr.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
}
