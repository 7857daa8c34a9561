//! Connections: a total cap and a cap per client address, and the idle
//! timeout that closes a connection on which no byte moved either way
//! (a client that holds a socket open without using it, or a reader that
//! stopped reading an event stream).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::client::ClientKey;
use crate::config::ConnectionLimits;
use crate::metrics::{Limit, Metrics};

/// Counts open connections, in total and per client address.
pub struct ConnectionGate {
    max: usize,
    per_client: usize,
    /// Open connections by client; an entry lives while it has one.
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// One admitted connection: released when dropped.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    client: ClientKey,
}

impl ConnectionGate {
    pub fn new(config: &ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max: config.max,
            per_client: config.per_client,
            open: Mutex::default(),
            metrics,
        })
    }

    /// Admits a connection from `address`, or says which cap it is over
    /// (and counts it).
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, Limit> {
        let client = ClientKey::of(address);
        let mut open = self.open.lock().unwrap();
        let refused = if open.total >= self.max {
            Some(Limit::Connections)
        } else if open.by_client.get(&client).copied().unwrap_or(0) >= self.per_client {
            Some(Limit::ConnectionsClient)
        } else {
            None
        };
        if let Some(limit) = refused {
            self.metrics.limited(limit);
            return Err(limit);
        }
        open.total += 1;
        *open.by_client.entry(client).or_default() += 1;
        self.metrics.connections_open.inc();
        Ok(ConnectionPermit {
            gate: Arc::clone(self),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap().total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap();
        open.total -= 1;
        if let Some(count) = open.by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.by_client.remove(&self.client);
            }
        }
        self.gate.metrics.connections_open.dec();
    }
}

/// A connection's byte stream that fails with `TimedOut` once no byte
/// moved either way for the idle timeout, and holds the connection's
/// permit for as long as it lives.
pub struct Guarded<S> {
    inner: S,
    idle: Duration,
    last_activity: Instant,
    /// Fires at `last_activity + idle` at the earliest; re-armed lazily.
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    _permit: ConnectionPermit,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, idle: Duration, permit: ConnectionPermit) -> Self {
        let metrics = Arc::clone(&permit.gate.metrics);
        Self {
            inner,
            idle,
            last_activity: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
            metrics,
            _permit: permit,
        }
    }

    /// The connection's own stream, e.g. to peek at its first bytes.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called when the inner stream is not ready: `Err` once idle too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                self.metrics.limited(Limit::Idle);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    fn moved(&mut self) {
        self.last_activity = Instant::now();
    }

    /// What a write of the inner stream means for the idle clock: bytes
    /// written are activity; not ready counts towards the idle timeout.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn gate(max: usize, per_client: usize) -> Arc<ConnectionGate> {
        ConnectionGate::new(
            &ConnectionLimits {
                max,
                per_client,
                ..ConnectionLimits::default()
            },
            Arc::default(),
        )
    }

    #[test]
    fn connections_are_capped_in_total_and_per_client_and_released() {
        let gate = gate(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Limit::ConnectionsClient));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Limit::Connections));
        drop(first);
        let _again = gate.admit(a).expect("a closed connection frees its place");
        assert_eq!(gate.open(), 3);
    }

    /// A connection on which nothing moves fails with TimedOut after the
    /// idle timeout.
    #[tokio::test]
    async fn an_idle_connection_times_out() {
        let gate = gate(1, 1);
        let permit = gate.admit("10.0.0.1".parse().unwrap()).unwrap();
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_millis(50), permit);
        let mut buf = [0u8; 8];
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(guarded);
        assert_eq!(gate.open(), 0, "the permit goes with the connection");
        drop(client);
    }
}
