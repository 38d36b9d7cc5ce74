//! Configuration: a TOML file, then `CREDITD_<SECTION>_<KEY>` environment variables, then
//! command-line flags (flags win). Parsed and validated once, at start.

use crate::journal::{Durability, WriterPriority};
use crate::store::embedded::Synchronous;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub sweep: SweepConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC address. Without API keys only a loopback address is accepted.
    pub listen: String,
    /// Largest request message; larger ones are refused (OUT_OF_RANGE) before any work.
    pub max_message_bytes: usize,
    /// Largest response message. Must leave room for a full batch's answers: a response
    /// too large to send after the work was done would tell the client "nothing happened".
    pub max_response_bytes: usize,
    /// A request still running after this long is answered DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace_ms: u64,
    /// The tokio runtime serving requests.
    pub runtime: Runtime,
    /// Worker threads of the multi-thread runtime; 0 means one per CPU.
    pub worker_threads: usize,
}

/// `current_thread` serves everything on one thread: the cheapest per call on one core (no
/// work stealing, fewer wake-ups). `multi_thread` spreads calls over `worker_threads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    CurrentThread,
    MultiThread,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Only "embedded" for now: SQLite in `data_dir`.
    pub kind: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// `async` durability: the longest an acknowledged change waits to be written.
    pub flush_interval_ms: u64,
    /// `async` durability: changes waiting to be written beyond which new ones wait for the
    /// store as in `sync` mode (bounds memory when writes fall behind).
    pub async_max_backlog: usize,
    pub sqlite_synchronous: Synchronous,
    /// How the journal writer yields to requests on a busy core.
    pub writer_priority: WriterPriority,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_batch_items: usize,
    pub max_holds_per_account: usize,
    pub idempotency_retention_hours: u64,
    pub idempotency_max_entries: usize,
    pub default_hold_ttl_seconds: u64,
    pub max_hold_ttl_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    pub holds_interval_ms: u64,
    pub cycles_interval_ms: u64,
    pub requests_interval_ms: u64,
    /// Accounts unused for a whole interval are kept compact until next used (about a sixth
    /// of the memory; the next use decodes it once). 0 keeps used accounts decoded.
    pub compact_interval_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "creditd=debug".
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            max_message_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            request_timeout_ms: 10_000,
            max_concurrent_streams: 1024,
            shutdown_grace_ms: 10_000,
            runtime: Runtime::CurrentThread,
            worker_threads: 0,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: "embedded".into(),
            data_dir: PathBuf::from("creditd-data"),
            durability: Durability::Sync,
            flush_interval_ms: 10,
            async_max_backlog: 100_000,
            sqlite_synchronous: Synchronous::Full,
            writer_priority: WriterPriority::Auto,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_items: 1000,
            max_holds_per_account: 10_000,
            idempotency_retention_hours: 24,
            idempotency_max_entries: 5_000_000,
            default_hold_ttl_seconds: 60,
            max_hold_ttl_seconds: 86_400,
        }
    }
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            holds_interval_ms: 1_000,
            cycles_interval_ms: 60_000,
            requests_interval_ms: 60_000,
            compact_interval_ms: 60_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}={value:?}: {message}")]
    Env { name: String, value: String, message: String },
    #[error("--set {0}: expected section.key=value, e.g. --set store.durability=async")]
    Set(String),
    #[error("configuration is not valid: {0}")]
    Invalid(String),
}

/// Room reserved per batch item in a batch response (an answer with dozens of grant
/// allocations stays well under it).
const BATCH_ANSWER_BUDGET_BYTES: usize = 8 * 1024;

impl ServerConfig {
    /// The tokio runtime this configuration asks for.
    pub fn runtime_builder(&self) -> tokio::runtime::Builder {
        let mut builder = match self.runtime {
            Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Runtime::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if self.worker_threads > 0 {
                    b.worker_threads(self.worker_threads);
                }
                b
            }
        };
        builder.enable_all();
        builder
    }
}

impl Config {
    /// File (if any), then environment, then `overrides` (`section.key=value`), validated.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut merged = toml::Value::try_from(Config::default()).expect("defaults serialize");
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let from_file: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
            merge(&mut merged, from_file);
        }
        let known = known_keys();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("CREDITD_") else {
                continue;
            };
            let Some((section, key)) = known.iter().find(|(s, k)| format!("{s}_{k}").to_uppercase() == rest) else {
                continue;
            };
            set(&mut merged, section, key, &value).map_err(|message| ConfigError::Env {
                name: name.clone(),
                value: value.clone(),
                message,
            })?;
        }
        for item in overrides {
            let (path, value) = item.split_once('=').ok_or_else(|| ConfigError::Set(item.clone()))?;
            let (section, key) = path.split_once('.').ok_or_else(|| ConfigError::Set(item.clone()))?;
            set(&mut merged, section, key, value).map_err(|m| ConfigError::Invalid(format!("--set {item}: {m}")))?;
        }
        let config: Config = merged.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let addr: SocketAddr = match self.server.listen.parse() {
            Ok(a) => a,
            Err(_) => {
                return bad(format!("server.listen {:?} is not an address like 127.0.0.1:50051", self.server.listen))
            }
        };
        if !addr.ip().is_loopback() {
            return bad(format!(
                "server.listen {addr} is not a loopback address, and no API keys are configured: \
                 creditd refuses to serve other hosts unauthenticated. Listen on 127.0.0.1 (or [::1])"
            ));
        }
        if self.store.kind != "embedded" {
            return bad(format!("store.kind {:?} is not supported; use \"embedded\"", self.store.kind));
        }
        if self.server.max_message_bytes < 1024 {
            return bad("server.max_message_bytes must be at least 1024".into());
        }
        let batch_answers = self.limits.max_batch_items.saturating_mul(BATCH_ANSWER_BUDGET_BYTES);
        if self.server.max_response_bytes < batch_answers {
            return bad(format!(
                "server.max_response_bytes ({}) must hold the answers to a full batch: at least limits.max_batch_items × {BATCH_ANSWER_BUDGET_BYTES} = {batch_answers}",
                self.server.max_response_bytes
            ));
        }
        if self.limits.max_batch_items == 0 || self.limits.max_holds_per_account == 0 {
            return bad("limits.max_batch_items and limits.max_holds_per_account must be at least 1".into());
        }
        if self.limits.idempotency_retention_hours < 24 {
            return bad("limits.idempotency_retention_hours must be at least 24: clients may retry for a day".into());
        }
        if self.limits.default_hold_ttl_seconds == 0
            || self.limits.default_hold_ttl_seconds > self.limits.max_hold_ttl_seconds
        {
            return bad("limits.default_hold_ttl_seconds must be between 1 and limits.max_hold_ttl_seconds".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(format!("log.format {:?} must be \"text\" or \"json\"", self.log.format));
        }
        if self.sweep.holds_interval_ms == 0
            || self.sweep.cycles_interval_ms == 0
            || self.sweep.requests_interval_ms == 0
        {
            return bad("sweep intervals must be at least 1 ms (only sweep.compact_interval_ms may be 0: off)".into());
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated")
    }
}

/// (section, key) of every setting, read off the defaults.
fn known_keys() -> Vec<(String, String)> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut keys = Vec::new();
    for (section, table) in defaults.as_table().expect("table") {
        for key in table.as_table().expect("section table").keys() {
            keys.push((section.clone(), key.clone()));
        }
    }
    keys
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets `section.key` from text, typed like the default value of that key.
fn set(config: &mut toml::Value, section: &str, key: &str, text: &str) -> Result<(), String> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let template =
        defaults.get(section).and_then(|s| s.get(key)).ok_or_else(|| format!("unknown setting {section}.{key}"))?;
    let value = match template {
        toml::Value::Integer(_) => {
            toml::Value::Integer(text.parse().map_err(|_| "expected a whole number".to_string())?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(text.parse().map_err(|_| "expected true or false".to_string())?)
        }
        _ => toml::Value::String(text.to_string()),
    };
    config.get_mut(section).and_then(|s| s.as_table_mut()).expect("section exists").insert(key.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[store]\ndurability = \"async\"\nflush_interval_ms = 5\n[server]\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let env = vec![
            ("CREDITD_STORE_FLUSH_INTERVAL_MS".to_string(), "7".to_string()),
            ("CREDITD_SERVER_LISTEN".into(), "127.0.0.1:7001".into()),
        ];
        let c = Config::load(Some(&file), env.into_iter(), &["server.listen=127.0.0.1:7002".into()]).unwrap();
        assert_eq!(c.store.durability, Durability::Async);
        assert_eq!(c.store.flush_interval_ms, 7);
        assert_eq!(c.server.listen, "127.0.0.1:7002");
    }

    #[test]
    fn the_writer_yields_by_share_when_answers_wait_for_it_and_at_once_otherwise() {
        let c = Config::load(None, std::iter::empty(), &[]).unwrap();
        assert_eq!(c.store.writer_priority, WriterPriority::Auto);
        assert_eq!(c.store.writer_priority.under(Durability::Sync), WriterPriority::Low);
        assert_eq!(c.store.writer_priority.under(Durability::Async), WriterPriority::Idle);
        let c = Config::load(None, std::iter::empty(), &["store.writer_priority=idle".into()]).unwrap();
        assert_eq!(c.store.writer_priority.under(Durability::Sync), WriterPriority::Idle);
        let c = Config::load(None, std::iter::empty(), &["store.writer_priority=low".into()]).unwrap();
        assert_eq!(c.store.writer_priority.under(Durability::Async), WriterPriority::Low);
        let err = Config::load(None, std::iter::empty(), &["store.writer_priority=high".into()]).unwrap_err();
        assert!(err.to_string().contains("writer_priority"), "{err}");
    }

    #[test]
    fn refuses_non_loopback_without_keys() {
        let err = Config::load(None, std::iter::empty(), &["server.listen=0.0.0.0:50051".into()]).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[test]
    fn responses_must_hold_a_full_batch() {
        let err = Config::load(None, std::iter::empty(), &["limits.max_batch_items=5000".into()]).unwrap_err();
        assert!(err.to_string().contains("max_response_bytes"), "{err}");
    }

    #[test]
    fn names_the_bad_setting() {
        let err = Config::load(
            None,
            vec![("CREDITD_LIMITS_MAX_BATCH_ITEMS".to_string(), "lots".to_string())].into_iter(),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("CREDITD_LIMITS_MAX_BATCH_ITEMS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[store]\ndurabilty = \"sync\"\n").unwrap();
        assert!(Config::load(Some(&file), std::iter::empty(), &[]).is_err());
    }
}
