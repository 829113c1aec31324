//! Unary gRPC calls made by hand over HTTP/2 (the `h2` crate), for what generated clients
//! cannot send: request trailers, hand-made message bytes, streams that never send a body.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use prost::Message;
use tokio::net::TcpStream;

/// One HTTP/2 connection to the server.
pub struct RawConnection {
    sender: h2::client::SendRequest<Bytes>,
}

/// What came back for one call.
#[derive(Debug)]
pub struct RawResponse {
    /// `grpc-status` (from the trailers, or the headers of a trailers-only answer).
    pub status: tonic::Code,
    pub message: String,
    /// The response headers (initial metadata).
    pub headers: HeaderMap,
    /// The response message bytes, without the 5-byte gRPC frame header.
    pub body: Vec<u8>,
}

/// A gRPC request frame: no compression, 4-byte big-endian length, the message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

impl RawConnection {
    /// Calls on an HTTP/2 connection the test opened itself.
    #[allow(dead_code)] // used by tests/hostile.rs
    pub fn from_sender(sender: h2::client::SendRequest<Bytes>) -> Self {
        Self { sender }
    }

    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { sender }
    }

    /// Calls `path` with `headers` (beyond the gRPC ones), the encoded `message` framed as
    /// one gRPC message, and then `trailers` if any.
    pub async fn call(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        message: &impl Message,
        trailers: &[(&str, &str)],
    ) -> RawResponse {
        self.call_bytes(path, headers, frame(&message.encode_to_vec()), trailers)
            .await
    }

    /// Like [`call`](Self::call), with the request body given as raw bytes.
    pub async fn call_bytes(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        trailers: &[(&str, &str)],
    ) -> RawResponse {
        let mut request = Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("a request");
        let sender = self.sender.clone();
        let mut sender = sender.ready().await.expect("the connection takes a stream");
        let (response, mut stream) = sender.send_request(request, false).expect("send headers");
        if trailers.is_empty() {
            stream.send_data(body, true).expect("send body");
        } else {
            stream.send_data(body, false).expect("send body");
            let mut map = HeaderMap::new();
            for (name, value) in trailers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                    HeaderValue::from_str(value).expect("a header value"),
                );
            }
            stream.send_trailers(map).expect("send trailers");
        }
        let response = response.await.expect("a response");
        let (parts, mut received) = response.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.expect("response data");
            let _ = received.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = received
            .trailers()
            .await
            .expect("trailers")
            .unwrap_or_default();
        let status_from = |map: &HeaderMap| {
            map.get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
        };
        let status = status_from(&trailers)
            .or_else(|| status_from(&parts.headers))
            .expect("a grpc-status");
        let message = trailers
            .get("grpc-message")
            .or_else(|| parts.headers.get("grpc-message"))
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        RawResponse {
            status: tonic::Code::from_i32(status),
            message,
            headers: parts.headers,
            body: bytes.get(5..).map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }
}
