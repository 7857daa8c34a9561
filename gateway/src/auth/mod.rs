//! Who is calling, and whether they may: credentials become an
//! [`Identity`] (a bearer JWT verified against the provider's keys, or a
//! static API key), and a route's or channel's [`AccessConfig`] is checked
//! against it.
//!
//! # Layout
//! - [`jwks`]: the signing keys (a JWKS file or URL, refreshed) and the
//!   token check (issuer, audience, algorithm allow-list, clock skew).
//! - [`api_keys`]: static keys, known only by their SHA-256.
//! - [`identity`]: a verified caller and why a credential was refused (a
//!   leaf the others share).
//! - [`policy`]: an identity against a route's or a channel's access.
//! - [`mint`]: development tokens (`osmosis-gateway token`).
//! - this file: the [`Authenticator`] that reads the credential a request
//!   carries and the errors a client sees (401 / 403, RFC 6750).
//!
//! A token or key is never logged: errors name what was wrong with it,
//! never its text.

pub mod api_keys;
pub mod identity;
pub mod jwks;
pub mod mint;
pub mod policy;

use std::sync::Arc;

use http::{HeaderMap, header};

use crate::config::AuthConfig;
use api_keys::ApiKeys;
pub use identity::{AuthError, Identity};
use jwks::JwtVerifier;

/// The header a static API key travels in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Where a browser's `EventSource` may carry its token instead of the
/// `Authorization` header, when a channel allows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BrowserToken<'a> {
    /// `access_token=` from the query string.
    pub query: Option<&'a str>,
}

/// Verifies the credentials requests carry.
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    api_keys: Option<ApiKeys>,
    /// A scope that may read any caller's replies.
    pub operator_scope: Option<String>,
    cookie: String,
}

/// A configured key source that cannot be read at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.jwt: {0}")]
    Keys(#[from] jwks::KeysError),
    #[error("auth.api_keys: {0}")]
    ApiKeys(#[from] api_keys::ApiKeysError),
}

impl Authenticator {
    /// Loads the keys (the JWKS is fetched now, so a wrong URL stops the
    /// start) and keeps them fresh in the background.
    pub async fn start(config: &AuthConfig) -> Result<Arc<Self>, AuthSetupError> {
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::start(jwt).await?),
            None => None,
        };
        let api_keys = match &config.api_keys {
            Some(keys) => Some(ApiKeys::load(keys)?),
            None => None,
        };
        Ok(Arc::new(Self {
            jwt,
            api_keys,
            operator_scope: config.operator_scope.clone(),
            cookie: config.cookie.clone(),
        }))
    }

    /// The identity the request's credential proves; `None` when it
    /// carries none. `browser` lets a token come from the query or the
    /// cookie too (channels that allow it).
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        browser: Option<BrowserToken<'_>>,
    ) -> Result<Option<Arc<Identity>>, AuthError> {
        if let Some(key) = headers.get(API_KEY_HEADER) {
            let keys = self.api_keys.as_ref().ok_or(AuthError::InvalidApiKey)?;
            let key = key.to_str().map_err(|_| AuthError::InvalidApiKey)?;
            return keys.identify(key).map(Some);
        }
        let token = match bearer_token(headers)? {
            Some(token) => Some(token.to_owned()),
            None => browser.and_then(|browser| {
                browser
                    .query
                    .map(str::to_owned)
                    .or_else(|| cookie(headers, &self.cookie))
            }),
        };
        let Some(token) = token else {
            return Ok(None);
        };
        let jwt = self.jwt.as_ref().ok_or_else(|| {
            AuthError::InvalidToken("this gateway accepts no bearer tokens".into())
        })?;
        jwt.verify(&token).await.map(Some)
    }
}

/// The token of an `Authorization: Bearer …` header; an `Authorization`
/// header of another scheme is a malformed credential, not an absent one.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidToken("the Authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::InvalidToken(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie, _)| *cookie == name)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_tokens_are_read_and_other_schemes_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Ok(None));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer_token(&headers), Ok(Some("abc.def")));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcg=="),
        );
        assert!(bearer_token(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(bearer_token(&headers).is_err());
    }

    #[test]
    fn the_auth_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; osmosis_token=t.o.k; x=1"),
        );
        assert_eq!(cookie(&headers, "osmosis_token").as_deref(), Some("t.o.k"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
