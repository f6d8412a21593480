//! Progress of long runs on stderr, only when stderr is a terminal:
//! `[2/8] Large map ... 12 s`, rewritten in place every second and erased
//! when the step ends, so that what the command prints is unchanged (and
//! nothing at all reaches a file or a pipe).

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Run step `n` of `total`, called `what`, showing that it runs.
pub fn step<R>(n: usize, total: usize, what: &str, run: impl FnOnce() -> R) -> R {
    if !std::io::stderr().is_terminal() {
        return run();
    }
    let (done, wait) = mpsc::channel::<()>();
    let label = format!("[{n}/{total}] {what}");
    std::thread::scope(|s| {
        let ticker = s.spawn(move || {
            let start = Instant::now();
            loop {
                let secs = start.elapsed().as_secs();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{label} ... {secs} s");
                let _ = err.flush();
                drop(err);
                if wait.recv_timeout(Duration::from_secs(1)) != Err(mpsc::RecvTimeoutError::Timeout) {
                    break;
                }
            }
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        });
        let r = run();
        let _ = done.send(());
        let _ = ticker.join();
        r
    })
}
