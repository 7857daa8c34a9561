//! A caller against a route's or a channel's access policy: anonymous
//! callers only where the policy is public, every required scope, every
//! required claim value; and for channels that bind subscriptions to a
//! claim, the only key the caller may read.

use super::identity::{AuthError, Identity};
use crate::config::AccessConfig;

/// Why a caller may not go on.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid credential (401).
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A valid credential that is not allowed here (403); `scopes` are the
    /// ones it lacks, for `WWW-Authenticate: … scope="…"`.
    #[error("{reason}")]
    Forbidden { reason: String, scopes: Vec<String> },
}

/// Whether `identity` (None: anonymous) may use what `access` guards.
pub fn check(access: &AccessConfig, identity: Option<&Identity>) -> Result<(), Denied> {
    let Some(identity) = identity else {
        return if access.public {
            Ok(())
        } else {
            Err(AuthError::Missing.into())
        };
    };
    let missing: Vec<String> = access
        .scopes
        .iter()
        .filter(|scope| !identity.scopes.contains(*scope))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Denied::Forbidden {
            reason: format!("the caller lacks the scope(s) {}", missing.join(" ")),
            scopes: missing,
        });
    }
    for (claim, required) in &access.claims {
        if identity.claims.get(claim) != Some(required) {
            return Err(Denied::Forbidden {
                reason: format!("the caller's {claim} claim does not allow this"),
                scopes: Vec::new(),
            });
        }
    }
    if let Some(claim) = &access.key_claim
        && !identity.claims.contains_key(claim)
    {
        return Err(Denied::Forbidden {
            reason: format!(
                "the caller has no {claim} claim, which subscriptions here are bound to"
            ),
            scopes: Vec::new(),
        });
    }
    Ok(())
}

/// The key a subscriber reads: with a `key_claim`, the claim's value (a
/// `key=` naming another is refused); otherwise what the subscriber asked.
pub fn subscription_key(
    access: &AccessConfig,
    identity: Option<&Identity>,
    requested: Option<String>,
) -> Result<Option<String>, Denied> {
    let Some(claim) = &access.key_claim else {
        return Ok(requested);
    };
    let bound = identity
        .and_then(|identity| identity.claims.get(claim))
        .ok_or(Denied::Unauthenticated(AuthError::Missing))?;
    match requested {
        Some(requested) if &requested != bound => Err(Denied::Forbidden {
            reason: format!("subscriptions here see only the records of the caller's {claim}"),
            scopes: Vec::new(),
        }),
        _ => Ok(Some(bound.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn caller(scopes: &[&str], claims: &[(&str, &str)]) -> Identity {
        Identity {
            subject: "alice".into(),
            scopes: scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn anonymous_callers_pass_only_public_policies() {
        let private = AccessConfig::default();
        assert_eq!(
            check(&private, None),
            Err(Denied::Unauthenticated(AuthError::Missing))
        );
        let public = AccessConfig {
            public: true,
            ..AccessConfig::default()
        };
        assert_eq!(check(&public, None), Ok(()));
    }

    #[test]
    fn every_scope_and_claim_is_required() {
        let access = AccessConfig {
            scopes: vec!["orders:write".into(), "orders:read".into()],
            claims: BTreeMap::from([("tenant".into(), "acme".into())]),
            ..AccessConfig::default()
        };
        let Err(Denied::Forbidden { scopes, .. }) = check(
            &access,
            Some(&caller(&["orders:write"], &[("tenant", "acme")])),
        ) else {
            panic!("a missing scope is forbidden");
        };
        assert_eq!(scopes, vec!["orders:read".to_string()]);
        assert!(matches!(
            check(
                &access,
                Some(&caller(
                    &["orders:write", "orders:read"],
                    &[("tenant", "other")]
                ))
            ),
            Err(Denied::Forbidden { .. })
        ));
        assert_eq!(
            check(
                &access,
                Some(&caller(
                    &["orders:write", "orders:read"],
                    &[("tenant", "acme")]
                ))
            ),
            Ok(())
        );
    }

    #[test]
    fn a_bound_subscription_reads_only_the_callers_key() {
        let access = AccessConfig {
            key_claim: Some("tenant".into()),
            ..AccessConfig::default()
        };
        let acme = caller(&[], &[("tenant", "acme")]);
        assert_eq!(
            subscription_key(&access, Some(&acme), None),
            Ok(Some("acme".into()))
        );
        assert_eq!(
            subscription_key(&access, Some(&acme), Some("acme".into())),
            Ok(Some("acme".into()))
        );
        assert!(matches!(
            subscription_key(&access, Some(&acme), Some("globex".into())),
            Err(Denied::Forbidden { .. })
        ));
        let unbound = AccessConfig::default();
        assert_eq!(
            subscription_key(&unbound, Some(&acme), Some("globex".into())),
            Ok(Some("globex".into()))
        );
    }
}
