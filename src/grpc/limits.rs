//! A bound on the size of a request message, enforced while the body streams in: a message
//! whose gRPC length prefix is over the limit, or a body that grows past it, fails with
//! RESOURCE_EXHAUSTED (gRPC's code for "message larger than the server accepts") before the
//! message is decoded or any handler runs. (tonic's own limit answers OUT_OF_RANGE; this one
//! answers first.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// The gRPC frame header: 1 byte compression flag, 4 bytes big-endian message length.
const FRAME_HEADER: usize = 5;

/// A request body that refuses a first message declared longer than `max_message` bytes, and
/// more than `max_message` + 5 bytes of data in all.
pub struct LimitedBody<B> {
    inner: B,
    max_message: usize,
    seen: usize,
    header: [u8; FRAME_HEADER],
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, max_message: usize) -> Self {
        Self {
            inner,
            max_message,
            seen: 0,
            header: [0; FRAME_HEADER],
        }
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
                if usize::try_from(declared).map_or(true, |len| len > self.max_message) {
                    return false;
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
                if let Some(data) = frame.data_ref()
                    && !this.admit(data)
                {
                    return Poll::Ready(Some(Err(this.too_large())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
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

/// Wraps every request body of a server in a [`LimitedBody`] of `max_message_bytes`.
pub fn limit_request_bodies(
    max_message_bytes: usize,
) -> impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone {
    move |request| {
        request.map(|body| tonic::body::Body::new(LimitedBody::new(body, max_message_bytes)))
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
        let mut body = LimitedBody::new((), 100);
        let bytes = frame(100, 100);
        for piece in bytes.chunks(3) {
            assert!(body.admit(piece));
        }
    }

    #[test]
    fn a_declared_length_over_the_limit_fails_at_once() {
        let mut body = LimitedBody::new((), 100);
        assert!(!body.admit(&frame(101, 0)));
        let mut split = LimitedBody::new((), 100);
        let header = frame(1_000_000, 0);
        assert!(split.admit(&header[..2]));
        assert!(!split.admit(&header[2..]));
    }

    #[test]
    fn more_data_than_the_limit_fails_whatever_the_prefix_says() {
        let mut body = LimitedBody::new((), 100);
        assert!(body.admit(&frame(10, 10)));
        assert!(!body.admit(&[b'x'; 100]));
    }
}
