//! `outpost status`: one GET to the gateway's local endpoint, with hyper's
//! HTTP/1 client over a tokio TCP stream (no pool, no TLS: it is loopback).
//!
//! The connection is driven in the same task as the request (no spawn), and
//! the whole exchange is bounded by a timeout, so a wedged gateway cannot
//! hang the command.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer: status code, content type and body (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("nothing is listening on {addr} (is the gateway running?)")]
    Refused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("bad request for {path}: {reason}")]
    Request { path: String, reason: String },
}

/// Where to connect for a listen address: a wildcard (`0.0.0.0`, `[::]`)
/// is reached on loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// GETs `path` from `addr`, all within `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { addr, timeout }),
    }
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<Response, ClientError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ClientError::Refused { addr },
        _ => ClientError::Connect { addr, source: e },
    })?;
    let http = |source| ClientError::Http { addr, source };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(http)?;
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| ClientError::Request {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    let work = async {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        Ok(Response {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::pin!(work, conn);
    // The connection future does the socket I/O the request waits on; it may
    // finish (the server closes) before `work` has taken the buffered body.
    tokio::select! {
        biased;
        r = &mut work => r,
        c = &mut conn => {
            c.map_err(http)?;
            work.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(connect_addr(a("0.0.0.0:9184")), a("127.0.0.1:9184"));
        assert_eq!(connect_addr(a("[::]:9184")), a("[::1]:9184"));
        assert_eq!(connect_addr(a("192.0.2.7:80")), a("192.0.2.7:80"));
    }

    #[tokio::test]
    async fn nothing_listening_is_reported_as_refused() {
        // Bind then drop: the port was free a moment ago and nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let e = get(addr, "/status", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }), "{e}");
    }
}
