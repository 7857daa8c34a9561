//! `Prefer` (RFC 7240): how a request-mode client asks to be answered —
//! at once (`respond-async`) or after another wait (`wait=N`, capped).

use std::time::Duration;

use http::HeaderMap;

/// What the client asked for with `Prefer` (RFC 7240).
pub struct Preference {
    /// Answer 202 as soon as the request is in its channel.
    pub respond_async: bool,
    /// How long to wait for the reply.
    pub wait: Duration,
}

impl Preference {
    pub fn parse(headers: &HeaderMap, default_wait: Duration, max_wait: Duration) -> Self {
        let mut preference = Self {
            respond_async: false,
            wait: default_wait,
        };
        let tokens = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim);
        for token in tokens {
            if token.eq_ignore_ascii_case("respond-async") {
                preference.respond_async = true;
            } else if let Some(seconds) = token
                .split_once('=')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("wait"))
                .and_then(|(_, value)| value.trim().parse::<f64>().ok())
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            {
                // Capped before converting: a huge `wait` is a long wait,
                // not a Duration overflow.
                preference.wait = Duration::from_secs_f64(seconds.min(max_wait.as_secs_f64()));
            }
        }
        preference
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn prefer_asks_for_async_or_another_wait_within_the_cap() {
        let parse = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            Preference::parse(&headers, Duration::from_secs(10), Duration::from_secs(60))
        };
        assert!(parse("respond-async").respond_async);
        assert!(parse("wait=3, respond-async").respond_async);
        assert_eq!(parse("wait=3").wait, Duration::from_secs(3));
        assert_eq!(
            parse("return=minimal; wait=0.5").wait,
            Duration::from_millis(500)
        );
        assert_eq!(parse("wait=600").wait, Duration::from_secs(60), "capped");
        assert_eq!(parse("wait=-1").wait, Duration::from_secs(10), "ignored");
        assert!(!parse("wait=1").respond_async);
        assert_eq!(
            parse("wait=1e300").wait,
            Duration::from_secs(60),
            "capped, no overflow"
        );
    }
}
