//! Bodies passing through the forward proxy: counted (the record's byte
//! counts), shown to the inspectors chunk by chunk when one asks for them,
//! and ended exactly once — when the body ends, fails, is refused by an
//! inspector, or is dropped early because the client went away.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::BoxError;
use crate::inspect::{self, Direction, Inspection, Inspector, Subject};

/// What an inspector refused in a body: rule and reason.
pub(super) type Denial = (Arc<str>, String);

/// How a counted body ended.
pub(super) struct End {
    /// Data bytes that passed.
    pub bytes: u64,
    /// Why it ended.
    pub how: Ended,
}

/// Why a counted body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    /// At its end.
    Complete,
    /// Its sender failed (the client for a request body, the origin for a
    /// response body): a framing error, a reset, a truncation.
    Failed(String),
    /// An inspector refused it.
    Refused(String),
    /// Dropped before its end: its reader went away (the client, for a
    /// response body), or the drain deadline stopped the exchange.
    Dropped,
}

/// Called once when the body ends.
pub(super) type OnEnd = Box<dyn FnOnce(End) + Send + Sync>;

/// The inspectors that asked for this flow's bodies.
#[derive(Clone)]
pub(super) struct Watch {
    pub subject: Arc<Subject>,
    pub inspectors: Arc<[Arc<dyn Inspector>]>,
    /// The first denial, shared by both directions of one exchange.
    pub denied: Arc<Mutex<Option<Denial>>>,
}

/// Refused by an inspector: the body stops with this error.
#[derive(Debug, thiserror::Error)]
#[error("refused by inspection: {0}")]
pub(super) struct Refused(pub String);

/// A body that counts its data bytes into `count`, shows them to `watch`,
/// and calls `on_end` once.
pub(super) struct Counted<B: Body> {
    inner: B,
    count: Arc<AtomicU64>,
    dir: Direction,
    watch: Option<Watch>,
    on_end: Option<OnEnd>,
}

impl<B: Body> Counted<B> {
    pub(super) fn new(
        inner: B,
        count: Arc<AtomicU64>,
        dir: Direction,
        watch: Option<Watch>,
        on_end: Option<OnEnd>,
    ) -> Self {
        Counted {
            inner,
            count,
            dir,
            watch,
            on_end,
        }
    }

    fn end(&mut self, how: Ended) {
        if let Some(f) = self.on_end.take() {
            f(End {
                bytes: self.count.load(Ordering::Relaxed),
                how,
            });
        }
    }

    fn inspect(&self, chunk: &[u8]) -> Option<Denial> {
        let w = self.watch.as_ref()?;
        match inspect::first_denial(w.inspectors.iter(), |i| {
            i.body_chunk(&w.subject, self.dir, chunk)
        }) {
            Inspection::Pass | Inspection::Intercept { .. } => None,
            Inspection::Deny { rule, reason } => {
                if let Ok(mut d) = w.denied.lock() {
                    d.get_or_insert_with(|| (rule.clone(), reason.clone()));
                }
                Some((rule, reason))
            }
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if let Some((rule, reason)) = this.inspect(d) {
                        let why = format!("{rule}: {reason}");
                        this.end(Ended::Refused(format!("refused by inspection: {why}")));
                        return Poll::Ready(Some(Err(Box::new(Refused(why)))));
                    }
                    this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                this.end(Ended::Failed(format!("body: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(Ended::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Counted<B> {
    fn drop(&mut self) {
        // hyper may drop a body it knows is over (an empty one, or one
        // whose length it has read) without polling it to its end.
        let how = if self.inner.is_end_stream() {
            Ended::Complete
        } else {
            Ended::Dropped
        };
        self.end(how);
    }
}
