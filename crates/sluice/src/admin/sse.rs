//! `/api/v1/flows/stream`: finished flows as Server-Sent Events, one
//! `event: flow` per record matching the request's filters.
//!
//! A task per subscriber moves records from the view's broadcast into a
//! small channel that is the response body; it ends when the client goes
//! away (the body is dropped). A subscriber that falls behind skips records
//! and is told how many with an `event: lagged`.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use sluice_observe::{FlowFilter, FlowRecord, FlowView};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::conns::Busy;

/// A comment line sent when nothing else was, so proxies and clients see
/// the stream is alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The live streams open, for `admin.max_streams`.
#[derive(Debug, Default)]
pub struct Live {
    open: Arc<AtomicUsize>,
}

/// The response body: frames from the subscriber task.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

/// One open stream, counted while its subscriber task runs; holds its
/// connection busy, so that it is never closed to make room.
struct Permit {
    open: Arc<AtomicUsize>,
    _busy: Busy,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Live {
    /// No streams yet.
    pub fn new() -> Live {
        Live::default()
    }

    /// Starts a subscriber for flows matching `filter`, unless `max`
    /// streams are open already.
    pub fn stream(
        &self,
        view: &Arc<FlowView>,
        filter: FlowFilter,
        max: u32,
        busy: Busy,
    ) -> Option<SseBody> {
        let max = max as usize;
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let permit = Permit {
            open: self.open.clone(),
            _busy: busy,
        };
        Some(stream(view, filter, permit))
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn stream(view: &Arc<FlowView>, filter: FlowFilter, permit: Permit) -> SseBody {
    let (tx, rx) = mpsc::channel(64);
    let mut live = view.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        // Tell the client how long to wait before reconnecting, and flush
        // the headers now rather than at the first flow.
        if tx
            .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            // A body dropped (client gone, HEAD) ends the task at once,
            // freeing its place under `admin.max_streams`.
            let next = tokio::select! {
                () = tx.closed() => return,
                next = tokio::time::timeout(KEEPALIVE, live.recv()) => next,
            };
            let frame = match next {
                Err(_) => Bytes::from_static(b": keepalive\n\n"),
                Ok(Ok(r)) if filter.matches(&r, SystemTime::now()) => event(&r),
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(n))) => {
                    Bytes::from(format!("event: lagged\ndata: {{\"skipped\":{n}}}\n\n"))
                }
                Ok(Err(RecvError::Closed)) => return,
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    SseBody { rx }
}

fn event(r: &FlowRecord) -> Bytes {
    // A record always serializes; JSON never contains a raw newline.
    let data = serde_json::to_string(r).unwrap_or_default();
    Bytes::from(format!("id: {}\nevent: flow\ndata: {data}\n\n", r.id()))
}
