//! A verified caller, and why a credential was refused: what every part of
//! authentication produces (a leaf: it imports none of them).

use std::collections::{BTreeMap, BTreeSet};

use osmosis_protocol::Caller;

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, or the API key's subject.
    pub subject: String,
    pub scopes: BTreeSet<String>,
    /// The token's claims as text (`tenant`, `email`…), for policies that
    /// require a value or bind a subscription's key to one. String claims
    /// as they are, numbers and booleans as their JSON text.
    pub claims: BTreeMap<String, String>,
}

impl Identity {
    /// The identity as workers receive it.
    pub fn caller(&self) -> Caller {
        Caller {
            subject: self.subject.clone(),
            scopes: self.scopes.iter().cloned().collect(),
        }
    }
}

/// Why a credential was not accepted: a 401 for the client.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credential where one is required.
    #[error("this resource requires authentication")]
    Missing,
    /// A credential that is malformed, expired, for someone else, or
    /// signed by a key this gateway does not trust.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid API key")]
    InvalidApiKey,
}
