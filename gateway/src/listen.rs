//! The public listener: accepts connections within the connection caps,
//! serves HTTP/1 and HTTP/2 with the header-read and idle timeouts and the
//! header bounds, and shuts down gracefully: on the signal it stops
//! accepting, lets every connection finish its requests and resolves once
//! the last one closed (what `axum::serve` does, with hyper's settings
//! that `axum::serve` does not expose).
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
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

/// Serves `app` on `listener` until `signal` resolves, then drains; with
/// `tls`, each connection's handshake runs first, in its own task and
/// within [`HANDSHAKE_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Arc<ConnectionGate>,
    limits: &ConnectionLimits,
    tls: Option<TlsAcceptor>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let serving = builder(limits, true);
    let refusing_builder = builder(limits, false);
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let idle = Duration::from_millis(limits.idle_timeout_ms);
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
                match &tls {
                    None => {
                        let connection = serving
                            .serve_connection_with_upgrades(TokioIo::new(io), service)
                            .into_owned();
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, %address, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
                        let serving = serving.clone();
                        tokio::spawn(async move {
                            let handshake =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await;
                            let io = match handshake {
                                Ok(Ok(io)) => io,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %address, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%address, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = serving
                                .serve_connection_with_upgrades(TokioIo::new(io), service)
                                .into_owned();
                            if let Err(error) = watcher.watch(connection).await {
                                tracing::debug!(%error, %address, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            Err(limit) => refuse(&refusing_builder, &refusing, stream, limit),
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// hyper's settings: the timer the timeouts need, the header-read
/// timeout, the header bounds; `keep_alive` off for refusals.
fn builder(limits: &ConnectionLimits, keep_alive: bool) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(keep_alive);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .enable_connect_protocol();
    builder
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
fn refuse(
    builder: &Builder<TokioExecutor>,
    refusing: &Arc<Semaphore>,
    stream: TcpStream,
    limit: Limit,
) {
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
    let connection = builder
        .serve_connection(TokioIo::new(stream), answer)
        .into_owned();
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
