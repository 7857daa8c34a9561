//! The trust settings: how callers prove who they are (`auth:`), what each
//! route and channel requires of them (`access:`), and which browser
//! origins may call (`cors:`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// How the gateway authenticates callers. Without this section every route
/// and channel is public, as before; with it, every route and channel
/// requires a verified caller unless its `access` says `public: true`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer JWTs, verified against a JWKS.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Static API keys (`X-API-Key` header), stored as SHA-256 hashes.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// A scope that may read any caller's replies with
    /// `GET /v1/requests/{id}` (support staff, operators). None: only the
    /// caller who sent a request reads its reply.
    #[serde(default)]
    pub operator_scope: Option<String>,
    /// Cookie a browser's `EventSource` may carry its token in, on channels
    /// whose access has `browser_token: true`.
    #[serde(default = "default_cookie")]
    pub cookie: String,
}

/// Where the signing keys come from and what a token must say.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS document on disk (re-read on refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document served by the identity provider.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the keys are fetched again; an unknown `kid` also fetches
    /// them (at most once per `refresh_min_secs`).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Least time between two fetches caused by unknown key ids, so that
    /// made-up `kid`s cannot make the gateway hammer the provider.
    #[serde(default = "default_refresh_min_secs")]
    pub refresh_min_secs: u64,
    /// Accepted `iss` values (one at least).
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one at least).
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (`RS256`, `ES256`, `EdDSA`, `HS256`…);
    /// a token signed otherwise is refused whatever its key.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

/// Static API keys, for services that cannot get tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// A YAML list of `{subject, sha256, scopes}` (a mounted Secret).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding the same YAML list.
    #[serde(default)]
    pub env: Option<String>,
}

/// What a route or a channel requires of its callers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Anonymous callers are let in (a presented credential must still be
    /// valid, and then travels to the workers).
    #[serde(default)]
    pub public: bool,
    /// Scopes the caller must all have.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims the caller's token must carry with exactly these values.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Channels: subscribers see only records keyed by this claim's value
    /// (a tenant sees its own records on a shared channel). A `key=` that
    /// names another value is refused.
    #[serde(default)]
    pub key_claim: Option<String>,
    /// Channels: a browser's `EventSource`, which cannot set headers, may
    /// bring its token as `access_token=` in the query or in the auth
    /// cookie. Query strings end up in proxies' logs: keep tokens short-lived.
    #[serde(default)]
    pub browser_token: bool,
}

/// TLS on the gateway's own listener, for setups without an ingress.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain in PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Browser origins allowed to call a route or read a channel (CORS).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, e.g. `https://app.example.com`; `*` for any (then
    /// without credentials).
    pub origins: Vec<String>,
    /// Whether browsers may send cookies and `Authorization` (not with `*`).
    #[serde(default)]
    pub credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "default_cors_max_age_secs")]
    pub max_age_secs: u64,
}

fn default_cookie() -> String {
    "osmosis_token".into()
}
fn default_refresh_secs() -> u64 {
    300
}
fn default_refresh_min_secs() -> u64 {
    10
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_cors_max_age_secs() -> u64 {
    600
}

impl AuthConfig {
    /// The settings make sense on their own: a way to authenticate, one key
    /// source each, algorithms this gateway knows.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt.is_none() && self.api_keys.is_none() {
            return Err(invalid("auth", "needs jwt, api_keys or both"));
        }
        if let Some(jwt) = &self.jwt {
            if jwt.jwks_file.is_some() == jwt.jwks_url.is_some() {
                return Err(invalid(
                    "auth.jwt",
                    "needs exactly one of jwks_file and jwks_url",
                ));
            }
            if jwt.issuers.is_empty() || jwt.audiences.is_empty() {
                return Err(invalid(
                    "auth.jwt",
                    "issuers and audiences must each name one value at least: a token for another audience must not open this gateway",
                ));
            }
            if jwt.algorithms.is_empty() {
                return Err(invalid("auth.jwt.algorithms", "must name one at least"));
            }
            for name in &jwt.algorithms {
                jsonwebtoken::Algorithm::from_str(name).map_err(|_| {
                    invalid(
                        "auth.jwt.algorithms",
                        format!("{name:?} is not a JWS algorithm (RS256, ES256, EdDSA, HS256…)"),
                    )
                })?;
            }
            if jwt.refresh_secs == 0 {
                return Err(invalid("auth.jwt.refresh_secs", "must be positive"));
            }
        }
        if let Some(keys) = &self.api_keys
            && keys.file.is_some() == keys.env.is_some()
        {
            return Err(invalid(
                "auth.api_keys",
                "needs exactly one of file and env",
            ));
        }
        if self.cookie.is_empty() {
            return Err(invalid("auth.cookie", "must not be empty"));
        }
        Ok(())
    }
}

impl AccessConfig {
    /// Whether the policy asks anything of a caller.
    pub fn requires_anything(&self) -> bool {
        !self.public
            || !self.scopes.is_empty()
            || !self.claims.is_empty()
            || self.key_claim.is_some()
    }

    /// `field` names where the policy is (`routes[2].access`,
    /// `channels.x.access`); routes cannot bind keys or take browser tokens.
    pub(super) fn validate(
        &self,
        field: &str,
        auth: Option<&AuthConfig>,
        is_route: bool,
    ) -> Result<(), ConfigError> {
        let asks_something = !self.scopes.is_empty()
            || !self.claims.is_empty()
            || self.key_claim.is_some()
            || self.browser_token;
        if auth.is_none() && asks_something {
            return Err(invalid(
                field,
                "requires callers to authenticate, but there is no auth section",
            ));
        }
        if is_route && (self.key_claim.is_some() || self.browser_token) {
            return Err(invalid(
                field,
                "key_claim and browser_token apply to channel subscriptions only",
            ));
        }
        if self.public && self.key_claim.is_some() {
            return Err(invalid(
                field,
                "key_claim needs an authenticated caller: it cannot be public",
            ));
        }
        Ok(())
    }
}

impl CorsConfig {
    pub(super) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.origins.is_empty() {
            return Err(invalid(field, "origins must name one at least"));
        }
        for origin in &self.origins {
            if origin == "*" {
                if self.credentials {
                    return Err(invalid(
                        field,
                        "origins \"*\" cannot go with credentials: browsers refuse it",
                    ));
                }
                continue;
            }
            if http::HeaderValue::from_str(origin).is_err()
                || !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(invalid(
                    field,
                    format!("{origin:?} is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        Ok(())
    }
}
