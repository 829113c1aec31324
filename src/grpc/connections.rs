//! The listener: at most `--max-connections` client connections at once. A connection beyond
//! the limit is accepted and closed at once (the client sees the connection reset and may try
//! again or another replica), before any byte of HTTP/2 is read, so it costs no memory; it is
//! counted in `todo_rejected_requests_total{reason="too_many_connections"}`. Accepted sockets
//! have Nagle's algorithm off: small gRPC frames go out at once instead of waiting up to 40 ms
//! for the peer's delayed ACK.
//!
//! With `--max-connection-age`, tonic sends a connection GOAWAY at that age; a connection still
//! open `--max-connection-age-grace` later is closed here, at the socket (its reads and writes
//! fail), whatever hyper is waiting for.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
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
    /// How long a connection may stay open at most (max connection age plus its grace).
    lifetime: Option<Duration>,
}

impl LimitedIncoming {
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        lifetime: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            metrics,
            lifetime,
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
                closes_at: this
                    .lifetime
                    .map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
            })));
        }
    }
}

/// An accepted connection; its permit returns to the listener when it closes.
pub struct CountedConnection {
    /// The socket.
    stream: TcpStream,
    /// This connection's place among `--max-connections`.
    _permit: OwnedSemaphorePermit,
    /// When the connection is closed whatever it is doing (max connection age plus grace).
    closes_at: Option<Pin<Box<Sleep>>>,
}

impl CountedConnection {
    /// An error once the connection has outlived its lifetime (and, until then, a wake-up
    /// registered for that moment, so a connection that only waits is closed too).
    fn past_lifetime(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let closes_at = self.closes_at.as_mut()?;
        closes_at.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived --max-connection-age and its grace",
            )
        })
    }
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
        let this = self.get_mut();
        if let Some(err) = this.past_lifetime(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(err) = this.past_lifetime(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
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
        let this = self.get_mut();
        if let Some(err) = this.past_lifetime(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn accept(incoming: &mut LimitedIncoming) -> CountedConnection {
        std::future::poll_fn(|cx| Pin::new(&mut *incoming).poll_next(cx))
            .await
            .expect("a connection")
            .expect("accepted")
    }

    #[tokio::test]
    async fn a_connection_is_closed_when_its_lifetime_is_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = LimitedIncoming::new(
            listener,
            4,
            Some(Duration::from_millis(300)),
            Arc::new(Metrics::new()),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut connection = accept(&mut incoming).await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        connection.read_exact(&mut buf).await.expect("alive before");
        // Waiting for bytes that never come ends with the lifetime, not never.
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut buf))
            .await
            .expect("woken at the end of the lifetime")
            .expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        let err = connection.write_all(b"pong").await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn without_a_lifetime_a_connection_stays_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = LimitedIncoming::new(listener, 4, None, Arc::new(Metrics::new()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut connection = accept(&mut incoming).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        connection.read_exact(&mut buf).await.expect("still open");
        assert_eq!(&buf, b"ping");
    }
}
