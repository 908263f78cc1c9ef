//! Zero-copy relaying for bulk transfers on Linux: `splice(2)` moves a
//! socket's received pages into a pipe and from the pipe into the other
//! socket, so the bytes never cross into user space (one copy fewer per
//! direction than read/write, and no user buffer).
//!
//! A pipe costs two descriptors and, while data sits in it, its pages; so a
//! direction only switches to splicing once it has shown bulk traffic (a
//! read that filled the whole copy buffer, see `relay::pump`). Interactive
//! and idle tunnels never create a pipe. The syscalls go through `nix`'s
//! safe wrappers; readiness comes from tokio (`try_io`), so a socket that
//! would block parks the task exactly as the copy path does.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

use crate::relay::{Counters, Ends, PumpError};

/// The pipe size asked for (the kernel rounds it to pages and caps it at
/// `/proc/sys/fs/pipe-max-size`; the default 64 KiB is kept if refused).
/// Bigger pipes mean fewer syscalls per byte; pages are only held while
/// data is in flight.
const PIPE_SIZE: i32 = 256 * 1024;

static ENABLED: AtomicBool = AtomicBool::new(true);
static PIPES: AtomicU64 = AtomicU64::new(0);

/// Turns splicing on or off for tunnels that start afterwards (benchmarks
/// compare both; it is on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How many pipes tunnels have created so far in this process.
pub fn pipes_created() -> u64 {
    PIPES.load(Ordering::Relaxed)
}

/// A non-blocking pipe, or `None` when splicing is off or no descriptor is
/// left (the caller keeps copying).
pub(crate) fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let (r, w) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
    PIPES.fetch_add(1, Ordering::Relaxed);
    // Best effort: a smaller pipe still works.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Some((r, w))
}

fn would_block(e: Errno) -> io::Error {
    if e == Errno::EAGAIN {
        io::ErrorKind::WouldBlock.into()
    } else {
        io::Error::from(e)
    }
}

/// Moves everything `r` sends to `w` through the pipe until `r` ends
/// (then shuts `w` down if it ended first: `relay::Ends`) or an error.
pub(crate) async fn pump(
    (pr, pw): (OwnedFd, OwnedFd),
    r: &OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    counters: &Counters,
    ends: &Ends,
    started: Instant,
) -> Result<(), PumpError> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let cap = fcntl(&pw, FcntlArg::F_GETPIPE_SZ)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(64 * 1024);
    let rs = r.as_ref();
    let ws = w.as_ref();
    loop {
        // Fill the pipe from the socket. The pipe is empty here, so an
        // EAGAIN can only mean the socket has nothing to read.
        r.readable().await.map_err(PumpError::Read)?;
        let n = match rs.try_io(Interest::READABLE, || {
            splice(rs.as_fd(), None, pw.as_fd(), None, cap, flags).map_err(would_block)
        }) {
            Ok(0) => {
                if ends.ended_first() {
                    let _ = w.shutdown().await;
                }
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        // Drain it into the other socket. The pipe holds data, so an EAGAIN
        // can only mean the socket's send buffer is full.
        let mut left = n;
        while left > 0 {
            ws.writable().await.map_err(PumpError::Write)?;
            match ws.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, ws.as_fd(), None, left, flags).map_err(would_block)
            }) {
                Ok(0) => return Err(PumpError::Write(io::ErrorKind::WriteZero.into())),
                Ok(m) => {
                    left -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                    counters.touch(started);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(PumpError::Write(e)),
            }
        }
    }
}
