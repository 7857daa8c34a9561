//! Bearer JWTs: the provider's signing keys (a JWKS from a file or a URL,
//! fetched at start, refreshed on an interval and when a token names a key
//! id not seen yet) and the check of a token against them — signature,
//! algorithm allow-list, issuer, audience, expiry with a clock skew.
//!
//! Verified tokens are remembered until they expire (bounded), so a client
//! that sends the same token on every request pays for one signature check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use osmosis_protocol::clock::unix_ms;
use serde_json::Value;

use super::identity::{AuthError, Identity};
use crate::config::JwtConfig;

/// Longest token accepted: larger ones are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Verified tokens remembered at most.
const VERIFIED_CAPACITY: u64 = 10_000;
/// How long a fetch of the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the signing keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("not a JWKS document: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the JWKS holds no key this gateway can use")]
    NoUsableKey,
}

/// Where the keys come from.
#[derive(Clone, Debug)]
enum KeysSource {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for KeysSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeysSource::File(path) => write!(f, "{}", path.display()),
            KeysSource::Url(url) => f.write_str(url),
        }
    }
}

/// The keys of one fetch: by key id, and those without one.
#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Arc<DecodingKey>>,
    unnamed: Vec<Arc<DecodingKey>>,
}

/// A verified token, remembered until it expires.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    expires_ms: u64,
}

/// Checks bearer tokens against the provider's current keys.
pub struct JwtVerifier {
    source: KeysSource,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    validation: Validation,
    /// Serialises fetches and remembers the last one, so that a burst of
    /// tokens with unknown key ids causes one fetch, not one each.
    last_fetch: tokio::sync::Mutex<Instant>,
    refresh_min: Duration,
    verified: Cache<Arc<str>, Verified>,
}

impl JwtVerifier {
    /// Fetches the keys (an error stops the start: a gateway that cannot
    /// verify any token should not look healthy) and refreshes them every
    /// `refresh_secs` in the background.
    pub async fn start(config: &JwtConfig) -> Result<Arc<Self>, KeysError> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => KeysSource::File(path.clone()),
            (None, Some(url)) => KeysSource::Url(url.clone()),
            (None, None) => unreachable!("validated with the configuration"),
        };
        let algorithms: Vec<Algorithm> = config
            .algorithms
            .iter()
            .map(|name| Algorithm::from_str(name).expect("validated with the configuration"))
            .collect();
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&config.issuers);
        validation.set_audience(&config.audiences);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let refresh = Duration::from_secs(config.refresh_secs);
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("an HTTP client with a timeout");
        let keys = fetch(&client, &source).await?;
        tracing::info!(source = %source, keys = keys.by_id.len() + keys.unnamed.len(), "JWT signing keys loaded");
        let verifier = Arc::new(Self {
            source,
            client,
            keys: RwLock::new(Arc::new(keys)),
            validation,
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            refresh_min: Duration::from_secs(config.refresh_min_secs),
            verified: Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                // A key removed from the JWKS stops vouching for its tokens
                // within one refresh.
                .time_to_live(refresh)
                .build(),
        });
        tokio::spawn(refresh_keys(Arc::downgrade(&verifier), refresh));
        Ok(verifier)
    }

    /// The identity `token` proves.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let now_ms = unix_ms(std::time::SystemTime::now());
        if let Some(verified) = self.verified.get(token)
            && verified.expires_ms > now_ms
        {
            return Ok(verified.identity);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::InvalidToken("malformed".into()))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken(format!(
                "signed with {:?}, which this gateway does not accept",
                header.alg
            )));
        }
        let mut candidates = self.candidates(header.kid.as_deref());
        if candidates.is_empty() && header.kid.is_some() {
            self.refresh_for_unknown_key().await;
            candidates = self.candidates(header.kid.as_deref());
        }
        if candidates.is_empty() {
            return Err(AuthError::InvalidToken("signed by an unknown key".into()));
        }
        let mut last_error = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &key,
                &self.validation,
            ) {
                Ok(data) => {
                    let (identity, expires_ms) = identity_of(data.claims)?;
                    let identity = Arc::new(identity);
                    self.verified.insert(
                        Arc::from(token),
                        Verified {
                            identity: Arc::clone(&identity),
                            expires_ms,
                        },
                    );
                    return Ok(identity);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(AuthError::InvalidToken(describe(
            last_error.expect("one key at least was tried").kind(),
        )))
    }

    /// The keys a token with key id `kid` may be signed with.
    fn candidates(&self, kid: Option<&str>) -> Vec<Arc<DecodingKey>> {
        let keys = Arc::clone(&self.keys.read().unwrap());
        match kid {
            Some(kid) => keys.by_id.get(kid).cloned().into_iter().collect(),
            None => keys
                .unnamed
                .iter()
                .chain(keys.by_id.values())
                .cloned()
                .collect(),
        }
    }

    /// A token names a key id not seen: the provider may have rotated its
    /// keys. Fetches again, unless a fetch happened within `refresh_min`.
    async fn refresh_for_unknown_key(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.elapsed() < self.refresh_min {
            return;
        }
        self.refresh().await;
        *last = Instant::now();
    }

    async fn refresh(&self) {
        match fetch(&self.client, &self.source).await {
            Ok(keys) => *self.keys.write().unwrap() = Arc::new(keys),
            Err(error) => {
                tracing::warn!(source = %self.source, %error, "JWT signing keys not refreshed; the previous ones stay in use");
            }
        }
    }
}

/// Refreshes the keys every `interval` while the verifier lives.
async fn refresh_keys(verifier: Weak<JwtVerifier>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(verifier) = verifier.upgrade() else {
            return;
        };
        let mut last = verifier.last_fetch.lock().await;
        verifier.refresh().await;
        *last = Instant::now();
    }
}

async fn fetch(client: &reqwest::Client, source: &KeysSource) -> Result<KeySet, KeysError> {
    let document = match source {
        KeysSource::File(path) => {
            tokio::fs::read(path)
                .await
                .map_err(|source| KeysError::Read {
                    path: path.clone(),
                    source,
                })?
        }
        KeysSource::Url(url) => {
            let fetch_error = |source| KeysError::Fetch {
                url: url.clone(),
                source,
            };
            client
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(fetch_error)?
                .bytes()
                .await
                .map_err(fetch_error)?
                .to_vec()
        }
    };
    key_set(serde_json::from_slice(&document)?)
}

/// The usable keys of a JWKS; the others are logged and left out.
fn key_set(jwks: JwkSet) -> Result<KeySet, KeysError> {
    let mut keys = KeySet::default();
    for jwk in &jwks.keys {
        let kid = jwk.common.key_id.clone();
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => match kid {
                Some(kid) => {
                    keys.by_id.insert(kid, Arc::new(key));
                }
                None => keys.unnamed.push(Arc::new(key)),
            },
            Err(error) => {
                tracing::warn!(kid = ?jwk.common.key_id, %error, "a JWKS key is not usable; left out");
            }
        }
    }
    if keys.by_id.is_empty() && keys.unnamed.is_empty() {
        return Err(KeysError::NoUsableKey);
    }
    Ok(keys)
}

/// The identity a verified token's claims name, and when it expires.
fn identity_of(claims: serde_json::Map<String, Value>) -> Result<(Identity, u64), AuthError> {
    let subject = match claims.get("sub") {
        Some(Value::String(subject)) if !subject.is_empty() => subject.clone(),
        _ => return Err(AuthError::InvalidToken("sub is not a text".into())),
    };
    let expires_ms = claims
        .get("exp")
        .and_then(Value::as_u64)
        .map_or(0, |secs| secs.saturating_mul(1000));
    let mut scopes = BTreeSet::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(text)) => {
                scopes.extend(text.split_ascii_whitespace().map(str::to_owned));
            }
            Some(Value::Array(items)) => {
                scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            _ => {}
        }
    }
    let claims: BTreeMap<String, String> = claims
        .into_iter()
        .filter_map(|(name, value)| match value {
            Value::String(text) => Some((name, text)),
            Value::Number(_) | Value::Bool(_) => Some((name, value.to_string())),
            _ => None,
        })
        .collect();
    Ok((
        Identity {
            subject,
            scopes,
            claims,
        },
        expires_ms,
    ))
}

/// What was wrong with a token, for the client (never the token itself).
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::InvalidIssuer => "issued by an issuer this gateway does not trust".into(),
        ErrorKind::InvalidAudience => "meant for another audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        ErrorKind::InvalidAlgorithm => "its algorithm does not match the key".into(),
        _ => "malformed".into(),
    }
}
