//! Why a configuration cannot be used (a leaf: every part of the
//! configuration reports through it).

/// A configuration that cannot be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// The error of a setting that makes no sense: `field` names it.
pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
