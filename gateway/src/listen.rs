//! The public listener: accepts connections within the connection caps,
//! serves HTTP/1 and HTTP/2 (by ALPN, or HTTP/2's preface on cleartext)
//! with the header-read and idle timeouts and the header bounds, and shuts
//! down gracefully: on the signal it stops accepting, lets every
//! connection finish its requests and resolves once the last one closed
//! (what `axum::serve` does, with hyper's settings that `axum::serve` does
//! not expose, and less memory per connection).
//!
//! A connection over a cap gets one 503 + Retry-After and is closed; at
//! most [`MAX_REFUSING`] such answers are in progress at once, further
//! excess connections are closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::Service;

use crate::config::ConnectionLimits;
use crate::limits::connections::{ConnectionGate, Guarded};
use crate::metrics::Limit;
use crate::problem::Problem;
use crate::tls::HANDSHAKE_TIMEOUT;
use tokio_rustls::TlsAcceptor;

/// Connections being answered 503 at once, at most.
pub const MAX_REFUSING: usize = 64;

/// How an HTTP/2 client with prior knowledge opens a cleartext connection
/// (RFC 9113 §3.4): no HTTP/1 request line starts so, as `PRI` is
/// reserved for it.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// Serves `app` on `listener` until `signal` resolves, then drains; with
/// `tls`, each connection's handshake runs first, in its own task and
/// within [`HANDSHAKE_TIMEOUT`].
///
/// Each connection is served by hyper's HTTP/1 or HTTP/2 connection
/// directly, in a task of its own once its protocol is known (ALPN, or a
/// cleartext connection's first bytes), rather than by one that can be
/// either: such a task is as large as the larger protocol's state, and
/// hyper-util's detection hands HTTP/1 a first read of a few bytes, which
/// makes it double its read buffer. An event stream holds its connection
/// for hours, so that is memory held per subscriber.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Arc<ConnectionGate>,
    limits: &ConnectionLimits,
    tls: Option<TlsAcceptor>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let http = Arc::new(Http::new(limits));
    let mut refusing_builder = http.http1.clone();
    refusing_builder.keep_alive(false);
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let opening = Duration::from_millis(limits.header_read_timeout_ms);
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        match gate.admit(address.ip()) {
            Ok(permit) => {
                let io = Guarded::new(stream, idle, permit);
                let service = service(app.clone(), address);
                let (http, watcher, tls) = (Arc::clone(&http), graceful.watcher(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let sniffed = opened(opening, speaks_h2(io.get_ref()), address).await;
                            if let Some(h2) = sniffed {
                                http.spawn(io, h2, service, watcher, address);
                            }
                        }
                        Some(acceptor) => {
                            let handshake = acceptor.accept(io);
                            if let Some(io) = opened(HANDSHAKE_TIMEOUT, handshake, address).await {
                                let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                                http.spawn(io, h2, service, watcher, address);
                            }
                        }
                    }
                });
            }
            Err(limit) => refuse(&refusing_builder, &refusing, stream, limit),
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What a connection's opening step (the TLS handshake, or its first
/// bytes) gave within `timeout`; `None`, logged, when it failed or took
/// longer, and the connection is dropped.
async fn opened<T>(
    timeout: Duration,
    step: impl Future<Output = io::Result<T>>,
    address: SocketAddr,
) -> Option<T> {
    match tokio::time::timeout(timeout, step).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::debug!(%error, %address, "connection failed before its first request");
            None
        }
        Err(_) => {
            tracing::debug!(%address, ?timeout, "connection not opened in time");
            None
        }
    }
}

/// Whether a cleartext connection opens with HTTP/2's preface: its first
/// bytes, peeked (left for hyper to read), decide.
async fn speaks_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; H2_PREFACE_START.len()];
    loop {
        let peeked = stream.peek(&mut first).await?;
        if peeked == 0 || first[..peeked] != H2_PREFACE_START[..peeked] {
            return Ok(false);
        }
        if peeked == first.len() {
            return Ok(true);
        }
        // The start of the preface so far, in a packet of its own (rare):
        // a peek returns at once while bytes wait, so the rest is waited
        // for a moment rather than in a spin.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// hyper's settings for both protocols: the timer the timeouts need, the
/// header-read timeout, the header bounds.
struct Http {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Http {
    fn new(limits: &ConnectionLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            // The bound on a head is `max_header_size`; `max_buf_size` only
            // caps the read buffer, which one read can fill past it.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self { http1, http2 }
    }

    /// Serves `io` over HTTP/2 (`h2`) or HTTP/1 in a task of its own, sized
    /// for that protocol alone.
    fn spawn<I, S>(&self, io: I, h2: bool, service: S, watcher: Watcher, address: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<Incoming>,
                Response = Response,
                Error = Infallible,
                Future: Send,
            > + Clone
            + Send
            + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            run(
                watcher.watch(self.http2.serve_connection(io, service)),
                address,
            );
        } else {
            run(
                watcher.watch(self.http1.serve_connection(io, service)),
                address,
            );
        }
    }
}

fn run(
    connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    address: SocketAddr,
) {
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %address, "connection ended with an error");
        }
    });
}

/// The application as hyper's service, with the client's address in every
/// request (`ConnectInfo`), as `axum::serve` provides it.
fn service(
    app: Router,
    address: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(address));
        let mut app = app.clone();
        async move { app.call(request.map(Body::new)).await }
    })
}

/// Answers a connection over a cap with one 503 and closes it; closes it
/// at once when too many refusals are in progress already.
fn refuse(builder: &http1::Builder, refusing: &Arc<Semaphore>, stream: TcpStream, limit: Limit) {
    let Ok(permit) = Arc::clone(refusing).try_acquire_owned() else {
        return;
    };
    let reason = match limit {
        Limit::ConnectionsClient => "this client has too many connections open",
        _ => "the gateway has too many connections open",
    };
    let answer = hyper::service::service_fn(move |_request: http::Request<Incoming>| async move {
        Ok::<_, Infallible>(
            Problem::Unavailable {
                reason: reason.to_owned(),
                retry_after: Duration::from_secs(1),
            }
            .into_response(),
        )
    });
    let connection = builder.serve_connection(TokioIo::new(stream), answer);
    tokio::spawn(async move {
        let _ = connection.await;
        drop(permit);
    });
}

/// Accept errors are the process's (too many open files) or a client's
/// (reset before accept): never fatal; a short pause lets descriptors free.
async fn accept_failed(error: io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
