//! Logging set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// How a process writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields flattened (for log collectors).
    Json,
}

/// The `--log-format` flag (or `OSMOSIS_LOG_FORMAT`) every binary takes:
/// flatten it into the binary's arguments and call [`LogArgs::init`]. It is
/// global, so a binary with subcommands takes it after any of them.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: human-readable text, or JSON lines for log collectors.
    #[arg(long, global = true, env = "OSMOSIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Starts logging in the chosen format.
    pub fn init(&self) {
        init_logging(self.log_format);
    }
}

/// Logs to stdout in `format`; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
