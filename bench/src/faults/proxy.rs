//! A TCP proxy in front of the server that loses responses: for each response (the first HTTP/2
//! HEADERS frame the server sends on a stream), with some probability it cuts the connection,
//! either just before forwarding that frame (the call ran, no byte of its answer arrives) or
//! just after (the client saw the response headers, then the connection broke: gRPC's A6 retry
//! policies never retry that).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where a lost response is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Never: a plain proxy.
    Never,
    /// Before the response headers are forwarded.
    BeforeHeaders,
    /// Right after the response headers are forwarded.
    AfterHeaders,
}

/// The proxy's address and how many connections it has cut.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
}

const HEADERS: u8 = 0x1;

/// Starts a proxy to `upstream` that cuts `probability` of responses at `cut`.
pub async fn start(upstream: SocketAddr, cut: Cut, probability: f64) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cuts = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&cuts);
    tokio::spawn(async move {
        while let Ok((downstream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // A server that is down: the client's connection closes at once.
                let Ok(upstream) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = downstream.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                relay(downstream, upstream, cut, probability, &counter).await;
            });
        }
    });
    Ok(Proxy { addr, cuts })
}

async fn relay(
    downstream: TcpStream,
    upstream: TcpStream,
    cut: Cut,
    probability: f64,
    cuts: &AtomicU64,
) {
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
    });
    let mut answered: HashSet<u32> = HashSet::new();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    'frames: while let Ok(n) = up_read.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
        // The 24-byte client preface only flows the other way; the server's bytes are frames.
        while buffer.len() >= 9 {
            let length =
                usize::from(buffer[0]) << 16 | usize::from(buffer[1]) << 8 | usize::from(buffer[2]);
            if buffer.len() < 9 + length {
                break;
            }
            let stream =
                u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
            let response_headers = buffer[3] == HEADERS && stream != 0 && answered.insert(stream);
            let lose = response_headers && cut != Cut::Never && rand::random_bool(probability);
            if lose && cut == Cut::BeforeHeaders {
                cuts.fetch_add(1, Ordering::Relaxed);
                break 'frames;
            }
            if down_write.write_all(&buffer[..9 + length]).await.is_err() {
                break 'frames;
            }
            buffer.drain(..9 + length);
            if lose {
                let _ = down_write.flush().await;
                cuts.fetch_add(1, Ordering::Relaxed);
                break 'frames;
            }
        }
    }
    requests.abort();
}
