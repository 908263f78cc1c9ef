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
use crate::inspect::{self, BodyScanner, Direction, Inspection, Inspector, Subject};

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
/// and calls `on_end` once. When an inspector streams the body
/// ([`BodyScanner`]), a chunk goes on only after every scanner released
/// it; without one, chunks pass as they are (no copy).
pub(super) struct Counted<B: Body> {
    inner: B,
    count: Arc<AtomicU64>,
    dir: Direction,
    watch: Option<Watch>,
    on_end: Option<OnEnd>,
    scanners: Vec<Box<dyn BodyScanner>>,
    /// Released bytes not yet handed on.
    pending: Option<Bytes>,
    /// A non-data frame (trailers) to hand on after `pending`.
    after: Option<Frame<Bytes>>,
    /// The inner body ended; the scanners were finished.
    inner_done: bool,
}

impl<B: Body> Counted<B> {
    pub(super) fn new(
        inner: B,
        count: Arc<AtomicU64>,
        dir: Direction,
        watch: Option<Watch>,
        on_end: Option<OnEnd>,
    ) -> Self {
        let scanners = watch
            .as_ref()
            .map(|w| {
                w.inspectors
                    .iter()
                    .filter_map(|i| i.body_scanner(&w.subject, dir))
                    .collect()
            })
            .unwrap_or_default();
        Counted {
            inner,
            count,
            dir,
            watch,
            on_end,
            scanners,
            pending: None,
            after: None,
            inner_done: false,
        }
    }

    /// Passes `data` through every scanner: what may go on now.
    fn scan(&mut self, data: &[u8], last: bool) -> Result<Vec<u8>, Denial> {
        let mut out = data.to_vec();
        for s in &mut self.scanners {
            let (v, mut released) = if out.is_empty() {
                (Inspection::Pass, Vec::new())
            } else {
                s.push(&out)
            };
            let v = if v.passes() && last {
                let (end, rest) = s.finish();
                released.extend_from_slice(&rest);
                end
            } else {
                v
            };
            match v {
                Inspection::Pass | Inspection::Intercept { .. } => out = released,
                Inspection::Deny { rule, reason } | Inspection::Unavailable { rule, reason } => {
                    return Err(self.denied(rule, reason));
                }
            }
        }
        Ok(out)
    }

    fn denied(&self, rule: Arc<str>, reason: String) -> Denial {
        if let Some(w) = &self.watch {
            if let Ok(mut d) = w.denied.lock() {
                d.get_or_insert_with(|| (rule.clone(), reason.clone()));
            }
        }
        (rule, reason)
    }

    fn refuse(&mut self, (rule, reason): Denial) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let why = format!("{rule}: {reason}");
        self.end(Ended::Refused(format!("refused by inspection: {why}")));
        Poll::Ready(Some(Err(Box::new(Refused(why)))))
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
            Inspection::Deny { rule, reason } | Inspection::Unavailable { rule, reason } => {
                Some(self.denied(rule, reason))
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
        loop {
            if let Some(b) = this.pending.take() {
                this.count.fetch_add(b.len() as u64, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if let Some(f) = this.after.take() {
                return Poll::Ready(Some(Ok(f)));
            }
            if this.inner_done {
                this.end(Ended::Complete);
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(d) = frame.data_ref() else {
                        // Trailers: whatever the scanners hold goes first.
                        if !this.scanners.is_empty() {
                            match this.scan(&[], true) {
                                Ok(rest) if !rest.is_empty() => this.pending = Some(rest.into()),
                                Ok(_) => {}
                                Err(d) => return this.refuse(d),
                            }
                            this.after = Some(frame);
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    if let Some(d) = this.inspect(d) {
                        return this.refuse(d);
                    }
                    if this.scanners.is_empty() {
                        this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    let d = d.clone();
                    match this.scan(&d, false) {
                        Ok(out) if !out.is_empty() => this.pending = Some(out.into()),
                        Ok(_) => {}
                        Err(d) => return this.refuse(d),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    this.end(Ended::Failed(format!("body: {e}")));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if this.scanners.is_empty() {
                        this.end(Ended::Complete);
                        return Poll::Ready(None);
                    }
                    this.inner_done = true;
                    match this.scan(&[], true) {
                        Ok(rest) if !rest.is_empty() => this.pending = Some(rest.into()),
                        Ok(_) => {}
                        Err(d) => return this.refuse(d),
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.scanners.is_empty() {
            self.inner.is_end_stream()
        } else {
            self.inner_done && self.pending.is_none() && self.after.is_none()
        }
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

/// A body held for a whole-object inspection: its first bytes, and
/// whether that was all of it.
pub(super) struct Held {
    /// The bytes read (at most the limit plus one frame).
    pub bytes: Vec<u8>,
    /// The rest of the body when it was larger than the limit.
    pub rest: Option<super::ProxyBody>,
}

/// Reads `body` until it ends or more than `limit` bytes came, each frame
/// within `idle`. Trailers are dropped (no inspected body carries them
/// here: request bodies go on as `Content-Length`).
pub(super) async fn hold(
    mut body: super::ProxyBody,
    limit: u64,
    idle: std::time::Duration,
) -> Result<Held, BoxError> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    loop {
        if bytes.len() as u64 > limit {
            return Ok(Held {
                bytes,
                rest: Some(body),
            });
        }
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err("the body stalled while it was held for inspection".into()),
            Ok(None) => return Ok(Held { bytes, rest: None }),
            Ok(Some(f)) => f?,
        };
        if let Ok(d) = frame.into_data() {
            bytes.extend_from_slice(&d);
        }
    }
}

/// A held body's bytes, then the rest of it (if any).
pub(super) fn replay(held: Held) -> super::ProxyBody {
    use http_body_util::{BodyExt, Full};
    let first = Full::new(Bytes::from(held.bytes)).map_err(|never| match never {});
    match held.rest {
        None => first.boxed(),
        Some(rest) => Chain {
            first: Some(first.boxed()),
            rest,
        }
        .boxed(),
    }
}

/// Two bodies, one after the other.
struct Chain {
    first: Option<super::ProxyBody>,
    rest: super::ProxyBody,
}

impl Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = &mut this.first {
            match Pin::new(f).poll_frame(cx) {
                Poll::Ready(None) => this.first = None,
                other => return other,
            }
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}
