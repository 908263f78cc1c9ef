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
    task::{Context, Poll, ready},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream};

use crate::relay::PumpError;

/// The pipe size asked for while fewer than [`BIG_PIPES`] pipes are open
/// (the kernel rounds it to pages and caps it at
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default; the default 64 KiB is
/// kept if refused). Bigger pipes mean fewer splices and wake-ups per
/// byte; pages are only held while data is in flight. One 2 GiB CONNECT
/// download (`bench/ab-bulk.sh`, Sluice's CPU from /proc), alternating
/// sizes, 6 runs each on a 2-vCPU VM shared with builds: 1 MiB 167 ms of
/// CPU per GiB, 256 KiB 196 (64 KiB, 4 runs: 260).
const PIPE_SIZE: i32 = 1024 * 1024;

/// The size asked for once [`BIG_PIPES`] are open. A pipe's size counts
/// against the user's `fs.pipe-user-pages-soft` (16,384 pages by default)
/// whether or not it holds data, and past that limit the kernel gives new
/// pipes its minimum: many concurrent bulk tunnels share the budget in
/// smaller pipes rather than the first 64 taking all of it.
const PIPE_SIZE_MANY: i32 = 256 * 1024;

/// How many pipes may be open at [`PIPE_SIZE`].
const BIG_PIPES: u64 = 16;

static ENABLED: AtomicBool = AtomicBool::new(true);
static PIPES: AtomicU64 = AtomicU64::new(0);
/// Pipes open now (made by [`pipe`], not yet dropped).
static OPEN: AtomicU64 = AtomicU64::new(0);

/// A pipe's two ends; counted in [`OPEN`] until dropped.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

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
pub(crate) fn pipe() -> Option<Pipe> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let (r, w) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
    PIPES.fetch_add(1, Ordering::Relaxed);
    let open = OPEN.fetch_add(1, Ordering::Relaxed);
    let size = if open < BIG_PIPES {
        PIPE_SIZE
    } else {
        PIPE_SIZE_MANY
    };
    // Best effort: a smaller pipe still works.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size));
    Some(Pipe { r, w })
}

fn would_block(e: Errno) -> io::Error {
    if e == Errno::EAGAIN {
        io::ErrorKind::WouldBlock.into()
    } else {
        io::Error::from(e)
    }
}

/// A direction that moves its bytes through a pipe: `splice(2)` from the
/// source into the pipe, then from the pipe into the sink.
pub(crate) struct Splicing {
    pipe: Pipe,
    /// The pipe's size: the most one splice takes in.
    cap: usize,
    /// Bytes in the pipe, not yet moved on to the sink.
    left: usize,
}

impl Splicing {
    pub(crate) fn new(pipe: Pipe) -> Self {
        let cap = fcntl(&pipe.w, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(64 * 1024);
        Splicing { pipe, cap, left: 0 }
    }

    /// Moves everything `src` sends to `dst` until `src` ends (`Ready(Ok)`,
    /// the pipe empty) or an error; `moved` hears of every splice into
    /// `dst`. Readiness comes from tokio, so a socket that would block parks
    /// the task exactly as the copy path does.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut dyn FnMut(usize),
    ) -> Poll<Result<(), PumpError>> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let (pr, pw) = (&self.pipe.r, &self.pipe.w);
        loop {
            if self.left == 0 {
                // Fill the pipe from the socket. The pipe is empty here, so
                // an EAGAIN can only mean the socket has nothing to read.
                ready!(src.poll_read_ready(cx)).map_err(PumpError::Read)?;
                match src.try_io(Interest::READABLE, || {
                    splice(src.as_fd(), None, pw.as_fd(), None, self.cap, flags)
                        .map_err(would_block)
                }) {
                    Ok(0) => return Poll::Ready(Ok(())),
                    Ok(n) => self.left = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(PumpError::Read(e))),
                }
            } else {
                // Drain it into the other socket. The pipe holds data, so an
                // EAGAIN can only mean the socket's send buffer is full.
                ready!(dst.poll_write_ready(cx)).map_err(PumpError::Write)?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice(pr.as_fd(), None, dst.as_fd(), None, self.left, flags)
                        .map_err(would_block)
                }) {
                    Ok(0) => {
                        return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Ok(m) => {
                        self.left -= m;
                        moved(m);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(PumpError::Write(e))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(p: &Pipe) -> i32 {
        fcntl(&p.w, FcntlArg::F_GETPIPE_SZ).unwrap_or(0)
    }

    /// Past `BIG_PIPES` open pipes, new ones are asked for the smaller
    /// size, so that many bulk tunnels do not exhaust the user's pipe
    /// budget (other tests may hold pipes too: only the bound is certain).
    #[test]
    fn pipes_past_the_big_ones_are_smaller() {
        let held: Vec<Pipe> = (0..BIG_PIPES).filter_map(|_| pipe()).collect();
        assert_eq!(held.len() as u64, BIG_PIPES);
        let next = pipe().unwrap();
        assert!(OPEN.load(Ordering::Relaxed) > BIG_PIPES);
        assert_eq!(size(&next), PIPE_SIZE_MANY);
        assert!(held.iter().all(|p| size(p) >= PIPE_SIZE_MANY));
    }
}
