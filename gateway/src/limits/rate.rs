//! Request rates: a token bucket per client address (over all routes) and
//! one per route (every client together), from `governor`. A call over a
//! bucket gets 429 with `Retry-After` and the `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy`
//! headers (IETF httpapi RateLimit header fields).
//!
//! Memory stays bounded: a bucket that has refilled is indistinguishable
//! from a fresh one, and such buckets are dropped every few thousand
//! calls; IPv6 clients count by /64 ([`super::client`]). The client is
//! the one [`super::forwarded`] names (behind trusted proxies, the one
//! they forward), else the peer.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;

use super::client::ClientKey;
use crate::config::{RateLimits as RateConfig, TokenBucket};
use crate::metrics::{Limit, Metrics};
use crate::problem::Problem;

/// Calls between two sweeps of refilled buckets.
const SWEEP_EVERY: u64 = 4096;

/// Paths never rate limited: probes and scrapes must answer.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// One keyed token bucket and how it was configured.
struct Buckets<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    bucket: TokenBucket,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(bucket: TokenBucket) -> Self {
        let per_second = NonZeroU32::new(bucket.per_second).expect("validated positive");
        let burst = NonZeroU32::new(bucket.burst).expect("validated positive");
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            bucket,
        }
    }

    /// `Err(wait)` when `key`'s bucket is empty.
    fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The configured buckets; none configured: nothing is limited.
pub struct RateLimits {
    per_client: Option<Buckets<ClientKey>>,
    per_route: Option<Buckets<String>>,
    calls: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A call over a bucket: which one, how long until a token, the bucket.
#[derive(Debug)]
pub struct Limited {
    pub limit: Limit,
    pub wait: Duration,
    pub bucket: TokenBucket,
}

impl RateLimits {
    pub fn new(config: &RateConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            per_client: config.per_client.map(Buckets::new),
            per_route: config.per_route.map(Buckets::new),
            calls: AtomicU64::new(0),
            metrics,
        }
    }

    /// Takes a token from the client's and the route's buckets.
    pub fn check(&self, client: Option<ClientKey>, route: &str) -> Result<(), Limited> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        if let (Some(buckets), Some(client)) = (&self.per_client, client) {
            buckets.check(&client).map_err(|wait| Limited {
                limit: Limit::RateClient,
                wait,
                bucket: buckets.bucket,
            })?;
        }
        if let Some(buckets) = &self.per_route {
            buckets.check(&route.to_owned()).map_err(|wait| Limited {
                limit: Limit::RateRoute,
                wait,
                bucket: buckets.bucket,
            })?;
        }
        Ok(())
    }

    /// Drops buckets that have refilled: they hold nothing a fresh one
    /// would not.
    fn sweep(&self) {
        if let Some(buckets) = &self.per_client {
            buckets.limiter.retain_recent();
            buckets.limiter.shrink_to_fit();
        }
        if let Some(buckets) = &self.per_route {
            buckets.limiter.retain_recent();
        }
    }

    /// Client buckets held now (for tests of the memory bound).
    pub fn client_buckets(&self) -> usize {
        self.per_client.as_ref().map_or(0, |b| b.limiter.len())
    }
}

impl Limited {
    /// 429 with `Retry-After` and the RateLimit header fields.
    pub fn into_response(self) -> Response {
        let reset = self.wait.as_millis().div_ceil(1000).max(1) as u64;
        let window = u64::from(self.bucket.burst).div_ceil(u64::from(self.bucket.per_second));
        let whose = match self.limit {
            Limit::RateRoute => "the route",
            _ => "this client",
        };
        let mut response = Problem::TooManyRequests {
            reason: format!(
                "{whose} is over its rate of {} requests a second (bursts of {})",
                self.bucket.per_second, self.bucket.burst
            ),
            retry_after: Duration::from_secs(reset),
        }
        .into_response();
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", HeaderValue::from(self.bucket.burst));
        headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
        headers.insert("ratelimit-reset", HeaderValue::from(reset));
        if let Ok(policy) = HeaderValue::from_str(&format!("{};w={window}", self.bucket.burst)) {
            headers.insert("ratelimit-policy", policy);
        }
        response
    }
}

impl RateLimits {
    /// A call to `route` (its pattern, or `unmatched`) at `path` from
    /// `client` takes a token from its client's and its route's buckets,
    /// or is [`Limited`] (counted). Probes and scrapes always pass.
    pub fn admit(&self, path: &str, route: &str, client: Option<IpAddr>) -> Result<(), Limited> {
        if EXEMPT.contains(&path) {
            return Ok(());
        }
        self.check(client.map(ClientKey::of), route)
            .inspect_err(|limited| self.metrics.limited(limited.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: Option<TokenBucket>, per_route: Option<TokenBucket>) -> RateLimits {
        RateLimits::new(
            &RateConfig {
                per_client,
                per_route,
            },
            Arc::default(),
        )
    }

    #[test]
    fn a_client_over_its_burst_waits_and_others_do_not() {
        let rate = limits(
            Some(TokenBucket {
                per_second: 1,
                burst: 2,
            }),
            None,
        );
        let a = Some(ClientKey::of("10.0.0.1".parse().unwrap()));
        let b = Some(ClientKey::of("10.0.0.2".parse().unwrap()));
        assert!(rate.check(a, "/x").is_ok());
        assert!(rate.check(a, "/x").is_ok());
        let limited = rate.check(a, "/x").unwrap_err();
        assert_eq!(limited.limit, Limit::RateClient);
        assert!(limited.wait > Duration::ZERO && limited.wait <= Duration::from_secs(1));
        assert!(
            rate.check(b, "/x").is_ok(),
            "another client has its own bucket"
        );
        let response = limited.into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["ratelimit-limit"], "2");
        assert_eq!(response.headers()["ratelimit-policy"], "2;w=2");
    }

    #[test]
    fn a_route_bucket_is_shared_by_every_client() {
        let rate = limits(
            None,
            Some(TokenBucket {
                per_second: 1,
                burst: 1,
            }),
        );
        let a = Some(ClientKey::of("10.0.0.1".parse().unwrap()));
        let b = Some(ClientKey::of("10.0.0.2".parse().unwrap()));
        assert!(rate.check(a, "/x").is_ok());
        assert_eq!(rate.check(b, "/x").unwrap_err().limit, Limit::RateRoute);
        assert!(
            rate.check(b, "/y").is_ok(),
            "another route has its own bucket"
        );
    }

    #[test]
    fn refilled_client_buckets_are_swept() {
        let rate = limits(
            Some(TokenBucket {
                per_second: 1_000_000,
                burst: 1_000_000,
            }),
            None,
        );
        for i in 0..SWEEP_EVERY - 1 {
            let address = std::net::Ipv4Addr::from(i as u32);
            let _ = rate.check(Some(ClientKey::of(address.into())), "/x");
        }
        assert_eq!(rate.client_buckets(), (SWEEP_EVERY - 1) as usize);
        // A million tokens a second refill a bucket within a microsecond.
        let _ = rate.check(None, "/x");
        assert!(
            rate.client_buckets() < (SWEEP_EVERY / 2) as usize,
            "refilled buckets are dropped"
        );
    }
}
