//! A bound on the size of a request body, enforced while it streams in: past the limit the
//! body fails with RESOURCE_EXHAUSTED (gRPC's code for "message larger than the server
//! accepts"), before the message is decoded or any handler runs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// A request body that refuses to yield more than `remaining` bytes of data.
pub struct LimitedBody<B> {
    inner: B,
    remaining: usize,
    limit: usize,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: usize) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
        }
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
                    if data.len() > this.remaining {
                        let status = Status::resource_exhausted(format!(
                            "request message too large: the limit is {} bytes",
                            this.limit.saturating_sub(5)
                        ));
                        return Poll::Ready(Some(Err(Box::new(status))));
                    }
                    this.remaining -= data.len();
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

/// Wraps every request body of a server in a [`LimitedBody`] of `max_message_bytes` plus the
/// 5-byte gRPC frame header.
pub fn limit_request_bodies(
    max_message_bytes: usize,
) -> impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone {
    move |request| {
        request.map(|body| tonic::body::Body::new(LimitedBody::new(body, max_message_bytes + 5)))
    }
}
