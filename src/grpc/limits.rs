//! Bounds on a request body, enforced while it streams in, before the message is decoded or
//! any handler runs:
//! - size: a message whose gRPC length prefix is over the limit, or a body that grows past it,
//!   fails with RESOURCE_EXHAUSTED (gRPC's code for "message larger than the server accepts";
//!   tonic's own limit answers OUT_OF_RANGE, this one answers first);
//! - time: a request message that has not fully arrived within the receive timeout fails
//!   with DEADLINE_EXCEEDED, so a stream that never sends its body ends instead of holding its
//!   slot and its headers forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::Status;

/// The gRPC frame header: 1 byte compression flag, 4 bytes big-endian message length.
const FRAME_HEADER: usize = 5;

/// A request body that refuses a first message declared longer than `max_message` bytes, more
/// than `max_message` + 5 bytes of data in all, and a first message that has not arrived when
/// `receive_deadline` fires.
pub struct LimitedBody<B> {
    /// The body as it arrives.
    inner: B,
    /// Largest message accepted.
    max_message: usize,
    /// Bytes received so far.
    seen: usize,
    /// The gRPC frame header of the first message, as it arrives.
    header: [u8; FRAME_HEADER],
    /// The first message's declared length, once its header is complete.
    declared: Option<usize>,
    /// How long the first message may take to arrive.
    receive_timeout: Duration,
    /// When the first message must have arrived; None once it has.
    receive_by: Option<Instant>,
    /// The timer for `receive_by`, set when the body first has to wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, max_message: usize, receive_timeout: Duration) -> Self {
        Self {
            inner,
            max_message,
            seen: 0,
            header: [0; FRAME_HEADER],
            declared: None,
            receive_timeout,
            receive_by: Some(Instant::now() + receive_timeout),
            timer: None,
        }
    }

    /// The first message is complete (or the body ended): no deadline any more.
    fn received(&mut self) {
        self.receive_by = None;
        self.timer = None;
    }

    fn too_slow(timeout: Duration) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Status::deadline_exceeded(format!(
            "the request message did not arrive within {}",
            humantime::format_duration(timeout)
        )))
    }

    /// Whether the first message has fully arrived.
    fn message_complete(&self) -> bool {
        self.declared
            .is_some_and(|declared| self.seen >= FRAME_HEADER + declared)
    }

    fn too_large(&self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Status::resource_exhausted(format!(
            "request message too large: the limit is {} bytes",
            self.max_message
        )))
    }

    /// Accounts for `data`; false if it breaks a limit.
    fn admit(&mut self, data: &[u8]) -> bool {
        if self.seen < FRAME_HEADER {
            let take = (FRAME_HEADER - self.seen).min(data.len());
            self.header[self.seen..self.seen + take].copy_from_slice(&data[..take]);
            if self.seen + take == FRAME_HEADER {
                let declared = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                match usize::try_from(declared) {
                    Ok(len) if len <= self.max_message => self.declared = Some(len),
                    _ => return false,
                }
            }
        }
        self.seen = self.seen.saturating_add(data.len());
        self.seen <= self.max_message + FRAME_HEADER
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !this.admit(data) {
                        return Poll::Ready(Some(Err(this.too_large())));
                    }
                    if this.message_complete() {
                        this.received();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => {
                this.received();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(receive_by) = this.receive_by else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(receive_by)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.received();
                    return Poll::Ready(Some(Err(Self::too_slow(this.receive_timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request body of a server in a [`LimitedBody`] of `max_message_bytes` and
/// `receive_timeout`.
pub fn limit_request_bodies(
    max_message_bytes: usize,
    receive_timeout: Duration,
) -> impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone {
    move |request| {
        request.map(|body| {
            tonic::body::Body::new(LimitedBody::new(body, max_message_bytes, receive_timeout))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(declared: u32, body: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend(std::iter::repeat_n(b'x', body));
        bytes
    }

    #[test]
    fn a_message_within_the_limit_passes_even_split_into_pieces() {
        let mut body = LimitedBody::new((), 100, Duration::from_secs(1));
        let bytes = frame(100, 100);
        for piece in bytes.chunks(3) {
            assert!(body.admit(piece));
        }
    }

    #[test]
    fn a_declared_length_over_the_limit_fails_at_once() {
        let mut body = LimitedBody::new((), 100, Duration::from_secs(1));
        assert!(!body.admit(&frame(101, 0)));
        let mut split = LimitedBody::new((), 100, Duration::from_secs(1));
        let header = frame(1_000_000, 0);
        assert!(split.admit(&header[..2]));
        assert!(!split.admit(&header[2..]));
    }

    #[test]
    fn more_data_than_the_limit_fails_whatever_the_prefix_says() {
        let mut body = LimitedBody::new((), 100, Duration::from_secs(1));
        assert!(body.admit(&frame(10, 10)));
        assert!(!body.admit(&[b'x'; 100]));
    }
}
