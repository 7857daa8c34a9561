//! Static API keys for services that cannot get tokens. The gateway knows
//! each key only by its SHA-256, read from a file or an environment
//! variable (either can come from a Kubernetes Secret), so the
//! configuration never holds a usable key.
//!
//! The list is YAML:
//! ```yaml
//! - subject: billing-service
//!   sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!   scopes: [orders:write]
//! ```
//! (`printf %s "$KEY" | sha256sum` gives the hash.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::identity::{AuthError, Identity};
use crate::config::ApiKeysConfig;

/// Why the key list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeysError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the environment variable {0} is not set")]
    MissingEnv(String),
    #[error("not a list of {{subject, sha256, scopes}}: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("entry {index} ({subject}): sha256 must be 64 hex digits")]
    BadHash { index: usize, subject: String },
}

/// One entry of the list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    subject: String,
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Claims the key's caller is taken to have (e.g. `tenant: acme`).
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

/// The known keys, by the hash of the key.
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<Identity>>,
}

impl ApiKeys {
    pub fn load(config: &ApiKeysConfig) -> Result<Self, ApiKeysError> {
        let text = match (&config.file, &config.env) {
            (Some(path), _) => {
                std::fs::read_to_string(path).map_err(|source| ApiKeysError::Read {
                    path: path.clone(),
                    source,
                })?
            }
            (None, Some(name)) => {
                std::env::var(name).map_err(|_| ApiKeysError::MissingEnv(name.clone()))?
            }
            (None, None) => unreachable!("validated with the configuration"),
        };
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self, ApiKeysError> {
        let entries: Vec<Entry> = serde_yaml::from_str(text)?;
        let mut by_hash = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(entry.sha256.trim(), &mut hash).map_err(|_| {
                ApiKeysError::BadHash {
                    index,
                    subject: entry.subject.clone(),
                }
            })?;
            by_hash.insert(
                hash,
                Arc::new(Identity {
                    subject: entry.subject,
                    scopes: entry.scopes.into_iter().collect::<BTreeSet<_>>(),
                    claims: entry.claims,
                }),
            );
        }
        tracing::info!(keys = by_hash.len(), "API keys loaded");
        Ok(Self { by_hash })
    }

    /// The identity of the caller presenting `key`.
    pub fn identify(&self, key: &str) -> Result<Arc<Identity>, AuthError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash
            .get(&hash)
            .cloned()
            .ok_or(AuthError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_known_by_its_hash_only() {
        // sha256("test")
        let keys = ApiKeys::parse(
            "- subject: billing\n  sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n  scopes: [orders:write]\n",
        )
        .unwrap();
        let identity = keys.identify("test").unwrap();
        assert_eq!(identity.subject, "billing");
        assert!(identity.scopes.contains("orders:write"));
        assert_eq!(keys.identify("guess"), Err(AuthError::InvalidApiKey));
    }

    #[test]
    fn a_malformed_hash_is_refused_at_load() {
        let error = ApiKeys::parse("- subject: x\n  sha256: nothex\n")
            .err()
            .unwrap();
        assert!(error.to_string().contains("64 hex digits"), "{error}");
    }
}
