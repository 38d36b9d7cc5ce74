//! Logging (and, later, metrics): structured `tracing` output, text or JSON.

use crate::config::LogConfig;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides `log.level` when set.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if config.format == "json" { builder.json().try_init() } else { builder.try_init() };
}
