//! Minting tokens for development and tests (`osmosis-gateway token`): a
//! JWT signed with a key from a JWKS file (a symmetric `oct` key, like the
//! demo's) or a private key in PEM. Production tokens come from the
//! identity provider; this is how to get one without it.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use osmosis_protocol::clock::unix_ms;
use serde_json::{Value, json};

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a JWKS document: {0}")]
    Jwks(#[from] serde_json::Error),
    #[error("the JWKS has no symmetric (oct) key{}", .0.as_ref().map(|k| format!(" with kid {k}")).unwrap_or_default())]
    NoSecretKey(Option<String>),
    #[error("the key is not valid base64url")]
    BadSecret,
    #[error("{0:?} is not a JWS algorithm")]
    Algorithm(String),
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What the token says.
#[derive(Clone, Debug)]
pub struct Claims {
    pub subject: String,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub lifetime: Duration,
    /// Further text claims (`tenant: acme`).
    pub extra: BTreeMap<String, String>,
}

impl Claims {
    fn to_json(&self) -> Value {
        let now = unix_ms(SystemTime::now()) / 1000;
        let mut claims = json!({
            "sub": self.subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.lifetime.as_secs(),
        });
        if !self.scopes.is_empty() {
            claims["scope"] = Value::String(self.scopes.join(" "));
        }
        for (name, value) in &self.extra {
            claims[name] = Value::String(value.clone());
        }
        claims
    }
}

/// A token signed with the symmetric key `kid` (or the first one) of the
/// JWKS file at `path`; its header names the key id.
pub fn with_jwks_secret(
    path: &Path,
    kid: Option<&str>,
    claims: &Claims,
) -> Result<String, MintError> {
    let document = std::fs::read(path).map_err(|source| MintError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let jwks: JwkSet = serde_json::from_slice(&document)?;
    let (jwk, secret) = jwks
        .keys
        .iter()
        .filter(|jwk| kid.is_none() || jwk.common.key_id.as_deref() == kid)
        .find_map(|jwk| match &jwk.algorithm {
            AlgorithmParameters::OctetKey(oct) => Some((jwk, oct.value.clone())),
            _ => None,
        })
        .ok_or_else(|| MintError::NoSecretKey(kid.map(str::to_owned)))?;
    let secret = URL_SAFE_NO_PAD
        .decode(secret.trim_end_matches('='))
        .map_err(|_| MintError::BadSecret)?;
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|alg| Algorithm::from_str(&alg.to_string()).ok())
        .unwrap_or(Algorithm::HS256);
    let mut header = Header::new(algorithm);
    header.kid = jwk.common.key_id.clone();
    Ok(jsonwebtoken::encode(
        &header,
        &claims.to_json(),
        &EncodingKey::from_secret(&secret),
    )?)
}

/// A token signed with a private key in PEM (`RS256`, `ES256`, `EdDSA`…).
pub fn with_pem(
    pem: &[u8],
    algorithm: &str,
    kid: Option<&str>,
    claims: &Claims,
) -> Result<String, MintError> {
    let algorithm =
        Algorithm::from_str(algorithm).map_err(|_| MintError::Algorithm(algorithm.to_owned()))?;
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem)?,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(pem),
        _ => EncodingKey::from_rsa_pem(pem)?,
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, &claims.to_json(), &key)?)
}
