//! Loading the configuration: the YAML file, then the `OSMOSIS_*`
//! environment overrides, then validation.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};

use super::{Config, ConfigError, ENV_PREFIX};

impl Config {
    /// Loads the file at `path` (if any), applies `OSMOSIS_*` overrides and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Yaml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_overrides()))
    }

    /// Parses a YAML document (no environment), for tests.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Yaml::string(yaml)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }
}

fn env_overrides() -> Env {
    // Only variables that name a setting: other OSMOSIS_* variables (the
    // binary's own flags, test harness settings) are not configuration.
    const SETTINGS: &[&str] = &[
        "listen",
        "ops_listen",
        "shutdown_grace_ms",
        "auth__",
        "tls__",
        "kafka__",
        "channels__",
        "replies__",
        "sse__",
        "limits__",
        "idempotency__",
    ];
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SETTINGS.iter().any(|setting| {
                key == *setting || (setting.ends_with("__") && key.starts_with(setting))
            })
        })
        .map(|key| {
            let key = key.as_str().to_ascii_lowercase();
            match key.strip_prefix("kafka__properties__") {
                Some(property) => format!("kafka.properties.{}", property.replace('_', ".")).into(),
                None => key.replace("__", ".").into(),
            }
        })
}
