//! The listener: at most `--max-connections` client connections at once. A connection beyond
//! the limit is accepted and closed at once (the client sees the connection reset and may try
//! again or another replica), before any byte of HTTP/2 is read, so it costs no memory; it is
//! counted in `todo_rejected_requests_total{reason="too_many_connections"}`. Accepted sockets
//! have Nagle's algorithm off: small gRPC frames go out at once instead of waiting up to 40 ms
//! for the peer's delayed ACK.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{Metrics, Rejection};

/// The accepted connections of a listener, at most `max_connections` open at once.
pub struct LimitedIncoming {
    /// The gRPC listener.
    listener: TcpListener,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// Where refused connections are counted.
    metrics: Arc<Metrics>,
}

impl LimitedIncoming {
    pub fn new(listener: TcpListener, max_connections: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            metrics,
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<CountedConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match this.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Pending => return Poll::Pending,
            };
            let Ok(permit) = Arc::clone(&this.permits).try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: --max-connections reached");
                this.metrics.record_rejected(Rejection::TooManyConnections);
                drop(stream);
                continue;
            };
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot turn Nagle's algorithm off");
            }
            return Poll::Ready(Some(Ok(CountedConnection {
                stream,
                _permit: permit,
            })));
        }
    }
}

/// An accepted connection; its permit returns to the listener when it closes.
pub struct CountedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for CountedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
