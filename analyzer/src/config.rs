//! Command line and configuration file.
//!
//! Three sources, strongest first: command-line flags, the TOML file named by
//! `--config`, then the environment (`CANARY_FILTER_TOKEN`,
//! `CANARY_SRE_TOKEN`, `CANARY_READ_TOKEN`, only for the tokens). Every value
//! is validated once here, and an error names the field it is about, so the
//! rest of the analyzer works with a [`Config`] that is known to be sane.
//!
//! This is also where exposure is decided: a non-loopback `listen` without
//! both the SRE and the filter token is refused, because anyone who can reach
//! the port could otherwise move the weights or forge counts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Default SRE API and sync address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9190";
/// Default directory of the state file.
pub const DEFAULT_STATE_DIR: &str = "./canary-state";
/// Default length of the sliding window.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;
/// Longest sliding window. The window keeps a dense latency histogram per
/// second and version (26 KiB each), so ten minutes costs about 32 MiB.
pub const MAX_WINDOW_SECONDS: u32 = 600;
/// Default time after which a silent worker no longer counts as live.
pub const DEFAULT_WORKER_STALE_AFTER_MS: u64 = 5_000;
/// Default patience of `?wait=true` on weight changes and rollbacks.
pub const DEFAULT_ROLLBACK_WAIT_TIMEOUT_MS: u64 = 2_000;
/// Upper bound for wait timeouts, so a typo cannot hold a request for days.
pub const MAX_WAIT_TIMEOUT_MS: u64 = 600_000;
/// Environment variable that sets the filter token when the file does not.
pub const FILTER_TOKEN_ENV: &str = "CANARY_FILTER_TOKEN";
/// Environment variable that sets the SRE token when the file does not.
pub const SRE_TOKEN_ENV: &str = "CANARY_SRE_TOKEN";
/// Environment variable that sets the read-only token when the file does not.
pub const READ_TOKEN_ENV: &str = "CANARY_READ_TOKEN";
/// Default Envoy cluster of the canary hosts, for host health.
pub const DEFAULT_CANARY_CLUSTER: &str = "canary";
/// Default number of finished rollouts kept in the history.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Most finished rollouts the history may keep.
pub const MAX_HISTORY_LIMIT: usize = 10_000;
/// The rollout controller's tick: once a second, as the brief evaluates.
pub const DEFAULT_ROLLOUT_TICK_MS: u64 = 1_000;

/// `canary-analyzer [--listen ADDR] [--state-dir DIR] [--config FILE]`
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "canary-analyzer", version, about = "Canary analyzer: aggregates filter reports and pushes weights")]
pub struct Cli {
    /// Address of the sync endpoint, SRE API and metrics [default: 127.0.0.1:9190].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the state file; created if missing [default: ./canary-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// TOML configuration file; flags win over its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Bearer token filters must present; `None` accepts every sync.
    pub filter_token: Option<String>,
    /// Bearer token of every state-changing SRE endpoint; `None` leaves them
    /// open (allowed on loopback only).
    pub sre_token: Option<String>,
    /// A token that reads but cannot change anything, for dashboards and
    /// Prometheus; only with `read_access = "token"`.
    pub read_token: Option<String>,
    /// Whether the read endpoints need a token.
    pub read_access: ReadAccess,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    pub window_seconds: u32,
    pub worker_stale_after_ms: u64,
    pub rollback_wait_timeout_ms: u64,
    /// Envoy admin endpoints read for the canary hosts' health; empty means
    /// host health is unknown.
    pub envoy_admin_urls: Vec<String>,
    /// The Envoy cluster whose hosts are the canary's.
    pub canary_cluster: String,
    /// Webhooks told about every rollout phase change.
    pub notify: Vec<NotifyTarget>,
    /// Finished rollouts kept by `GET /v1/rollouts/history`.
    pub history_limit: usize,
    /// Period of the rollout controller (not in the file: tests shorten it).
    pub rollout_tick_ms: u64,
}

/// Who may call the read endpoints (`GET /v1/rollout`, history, assignment,
/// `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadAccess {
    /// Anyone who can reach the port.
    #[default]
    Open,
    /// The SRE token or the read token.
    Token,
}

impl ReadAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadAccess::Open => "open",
            ReadAccess::Token => "token",
        }
    }
}

/// PEM files of the API's TLS certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The token environment variables, read once by `main`. Tests pass their
/// own instead of touching the process environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvTokens {
    pub filter: Option<String>,
    pub sre: Option<String>,
    pub read: Option<String>,
}

impl EnvTokens {
    /// `CANARY_FILTER_TOKEN`, `CANARY_SRE_TOKEN` and `CANARY_READ_TOKEN`.
    pub fn from_process() -> EnvTokens {
        EnvTokens {
            filter: std::env::var(FILTER_TOKEN_ENV).ok(),
            sre: std::env::var(SRE_TOKEN_ENV).ok(),
            read: std::env::var(READ_TOKEN_ENV).ok(),
        }
    }
}

// Secrets: keep them out of logs.
impl fmt::Debug for EnvTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("EnvTokens")
            .field("filter", &shown(&self.filter))
            .field("sre", &shown(&self.sre))
            .field("read", &shown(&self.read))
            .finish()
    }
}

/// One `[[notify]]` table.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub url: String,
    pub format: NotifyFormat,
    /// PagerDuty's integration key; a secret.
    pub routing_key: Option<String>,
}

/// The payload a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// Slack's incoming-webhook message (`text` and `attachments`).
    Slack,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// The analyzer's own event document.
    Json,
}

impl NotifyFormat {
    pub const ALL: [NotifyFormat; 3] = [NotifyFormat::Slack, NotifyFormat::Pagerduty, NotifyFormat::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyFormat::Slack => "slack",
            NotifyFormat::Pagerduty => "pagerduty",
            NotifyFormat::Json => "json",
        }
    }
}

// The routing key is a secret: keep it out of logs.
impl fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyTarget")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("routing_key", &self.routing_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why the configuration was refused. Each variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// A field inside a list, e.g. `notify[1].url`.
    #[error("{field}: {message}")]
    InvalidAt { field: String, message: String },
}

impl ConfigError {
    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::InvalidAt { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl Config {
    /// Defaults for everything, with the state in `state_dir`: what tests and
    /// embedders start from.
    pub fn with_state_dir(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9190)),
            state_dir: state_dir.into(),
            filter_token: None,
            sre_token: None,
            read_token: None,
            read_access: ReadAccess::Open,
            tls: None,
            window_seconds: DEFAULT_WINDOW_SECONDS,
            worker_stale_after_ms: DEFAULT_WORKER_STALE_AFTER_MS,
            rollback_wait_timeout_ms: DEFAULT_ROLLBACK_WAIT_TIMEOUT_MS,
            envoy_admin_urls: Vec::new(),
            canary_cluster: DEFAULT_CANARY_CLUSTER.to_owned(),
            notify: Vec::new(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            rollout_tick_ms: DEFAULT_ROLLOUT_TICK_MS,
        }
    }

    /// Reads the file named by `--config` (if any) and merges it with the
    /// flags and the token environment variables.
    pub fn load(cli: &Cli, env: EnvTokens) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })?;
                Some(FileConfig::parse(path, &text)?)
            }
            None => None,
        };
        Config::merge(cli, file.unwrap_or_default(), env)
    }

    /// Merges already-parsed sources; flags win over the file, the file over
    /// the environment.
    pub fn merge(cli: &Cli, file: FileConfig, env: EnvTokens) -> Result<Config, ConfigError> {
        let listen_text = cli.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|error| ConfigError::Invalid {
            field: "listen",
            message: format!("{listen_text:?} is not an IP:port address ({error})"),
        })?;
        let state_dir = cli.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }

        let filter_token = resolve_token(&FILTER_TOKEN_KEYS, file.filter_token, file.filter_token_file, env.filter)?;
        let sre_token = resolve_token(&SRE_TOKEN_KEYS, file.sre_token, file.sre_token_file, env.sre)?;
        let read_token = resolve_token(&READ_TOKEN_KEYS, file.read_token, file.read_token_file, env.read)?;
        // One token per role: a shared value would let a filter's token
        // (which sits in every Envoy's configuration) move the weights.
        if sre_token.is_some() && sre_token == filter_token {
            return Err(invalid("sre_token", "must differ from filter_token: each role needs its own secret"));
        }
        if read_token.is_some() && (read_token == sre_token || read_token == filter_token) {
            return Err(invalid("read_token", "must differ from sre_token and filter_token"));
        }
        let read_access = file.read_access.unwrap_or_default();
        match read_access {
            ReadAccess::Token if sre_token.is_none() => {
                return Err(invalid(
                    "read_access",
                    "is \"token\" but no sre_token is set (sre_token, sre_token_file or CANARY_SRE_TOKEN); \
                     reads cannot be closed while changes stay open",
                ));
            }
            ReadAccess::Open if read_token.is_some() => {
                return Err(invalid(
                    "read_token",
                    "is set but read_access is \"open\", so it would protect nothing; \
                     set read_access = \"token\" or drop read_token",
                ));
            }
            _ => {}
        }
        let tls = match (file.tls_cert_file, file.tls_key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles { cert_file, key_file }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key_file",
                    "tls_cert_file is set but tls_key_file is not; set both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert_file",
                    "tls_key_file is set but tls_cert_file is not; set both or neither",
                ));
            }
        };
        check_exposure(listen, filter_token.is_some(), sre_token.is_some())?;

        let window_seconds = file.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS);
        if !(1..=MAX_WINDOW_SECONDS).contains(&window_seconds) {
            return Err(invalid("window_seconds", &format!("is {window_seconds}, must be 1..={MAX_WINDOW_SECONDS}")));
        }
        let worker_stale_after_ms = file.worker_stale_after_ms.unwrap_or(DEFAULT_WORKER_STALE_AFTER_MS);
        if worker_stale_after_ms == 0 {
            return Err(invalid("worker_stale_after_ms", "must be positive"));
        }
        let rollback_wait_timeout_ms = file.rollback_wait_timeout_ms.unwrap_or(DEFAULT_ROLLBACK_WAIT_TIMEOUT_MS);
        if !(1..=MAX_WAIT_TIMEOUT_MS).contains(&rollback_wait_timeout_ms) {
            return Err(invalid(
                "rollback_wait_timeout_ms",
                &format!("is {rollback_wait_timeout_ms}, must be 1..={MAX_WAIT_TIMEOUT_MS}"),
            ));
        }
        let mut envoy_admin_urls = Vec::new();
        for (position, url) in file.envoy_admin_urls.unwrap_or_default().into_iter().enumerate() {
            let url = url.trim_end_matches('/').to_owned();
            check_http_url(&url).map_err(|message| ConfigError::InvalidAt {
                field: format!("envoy_admin_urls[{position}]"),
                message,
            })?;
            envoy_admin_urls.push(url);
        }
        let canary_cluster = file.canary_cluster.unwrap_or_else(|| DEFAULT_CANARY_CLUSTER.to_owned());
        if canary_cluster.is_empty() {
            return Err(invalid("canary_cluster", "must not be empty"));
        }
        let mut notify = Vec::new();
        for (position, target) in file.notify.unwrap_or_default().into_iter().enumerate() {
            let at = |name: &str| format!("notify[{position}].{name}");
            check_http_url(&target.url).map_err(|message| ConfigError::InvalidAt { field: at("url"), message })?;
            let routing_key = target.routing_key.filter(|key| !key.is_empty());
            match (target.format, &routing_key) {
                (NotifyFormat::Pagerduty, None) => {
                    return Err(ConfigError::InvalidAt {
                        field: at("routing_key"),
                        message: "format pagerduty needs the integration's routing_key".to_owned(),
                    });
                }
                (NotifyFormat::Slack | NotifyFormat::Json, Some(_)) => {
                    return Err(ConfigError::InvalidAt {
                        field: at("routing_key"),
                        message: "only format pagerduty takes a routing_key".to_owned(),
                    });
                }
                _ => {}
            }
            notify.push(NotifyTarget { url: target.url, format: target.format, routing_key });
        }
        let history_limit = file.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_LIMIT).contains(&history_limit) {
            return Err(invalid("history_limit", &format!("is {history_limit}, must be 1..={MAX_HISTORY_LIMIT}")));
        }
        Ok(Config {
            listen,
            state_dir,
            filter_token,
            sre_token,
            read_token,
            read_access,
            tls,
            window_seconds,
            worker_stale_after_ms,
            rollback_wait_timeout_ms,
            envoy_admin_urls,
            canary_cluster,
            notify,
            history_limit,
            rollout_tick_ms: DEFAULT_ROLLOUT_TICK_MS,
        })
    }
}

/// Whether `ip` only reaches this host: 127.0.0.0/8 and ::1 (also written
/// as `::ffff:127.x.y.z`). The unspecified address is not loopback: it
/// listens on every interface.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Refuses a non-loopback `listen` unless both tokens are set.
fn check_exposure(listen: SocketAddr, has_filter_token: bool, has_sre_token: bool) -> Result<(), ConfigError> {
    if is_loopback(listen.ip()) || (has_filter_token && has_sre_token) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (!has_sre_token).then_some("sre_token (or sre_token_file, or env CANARY_SRE_TOKEN)"),
        (!has_filter_token).then_some("filter_token (or filter_token_file, or env CANARY_FILTER_TOKEN)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    Err(ConfigError::Invalid {
        field: "listen",
        message: format!(
            "{listen} is not a loopback address, and without a token anyone who reaches it could move the canary \
             weights or forge counts; set {}, or listen on 127.0.0.1",
            missing.join(" and ")
        ),
    })
}

/// The configuration keys of one token.
struct TokenKeys {
    key: &'static str,
    file_key: &'static str,
}

const FILTER_TOKEN_KEYS: TokenKeys = TokenKeys { key: "filter_token", file_key: "filter_token_file" };
const SRE_TOKEN_KEYS: TokenKeys = TokenKeys { key: "sre_token", file_key: "sre_token_file" };
const READ_TOKEN_KEYS: TokenKeys = TokenKeys { key: "read_token", file_key: "read_token_file" };

/// One token from its inline key, its file key or its environment variable,
/// in that order. An empty inline or environment value means "no token", as
/// in the filter's configuration.
fn resolve_token(
    keys: &TokenKeys,
    inline: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let from_file = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                field: keys.file_key,
                message: format!("set either {} or {}, not both", keys.key, keys.file_key),
            });
        }
        (Some(token), None) => Some((token, keys.key)),
        (None, Some(path)) => Some((read_token_file(keys.file_key, &path)?, keys.file_key)),
        (None, None) => None,
    };
    let (token, field) = match from_file {
        Some((token, field)) => (token, field),
        None => (env.unwrap_or_default(), keys.key),
    };
    if token.is_empty() {
        return Ok(None);
    }
    // A client sends the token in a header, where spaces and control
    // characters are trimmed or refused: such a token could never match.
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ConfigError::Invalid {
            field,
            message: "must be printable ASCII without spaces (it travels in an HTTP header)".to_owned(),
        });
    }
    Ok(Some(token))
}

/// Webhooks and Envoy admin endpoints are `http://` or `https://` URLs with
/// a host.
fn check_http_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("{url:?} must be an http:// or https:// URL with a host"));
    }
    Ok(())
}

/// The TOML file as written; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub filter_token: Option<String>,
    /// A file whose content (trailing whitespace trimmed) is the token, so
    /// the secret can live outside the configuration.
    pub filter_token_file: Option<PathBuf>,
    pub sre_token: Option<String>,
    pub sre_token_file: Option<PathBuf>,
    pub read_token: Option<String>,
    pub read_token_file: Option<PathBuf>,
    pub read_access: Option<ReadAccess>,
    /// PEM certificate chain, leaf first; with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    pub window_seconds: Option<u32>,
    pub worker_stale_after_ms: Option<u64>,
    pub rollback_wait_timeout_ms: Option<u64>,
    pub envoy_admin_urls: Option<Vec<String>>,
    pub canary_cluster: Option<String>,
    pub notify: Option<Vec<NotifyFileTarget>>,
    pub history_limit: Option<usize>,
}

/// A `[[notify]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFileTarget {
    pub url: String,
    pub format: NotifyFormat,
    pub routing_key: Option<String>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        // toml's message already names the key and the line.
        toml::from_str(text).map_err(|error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })
    }
}

// The tokens are secrets: keep them out of logs and panic messages.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("filter_token", &self.filter_token.as_ref().map(|_| "<redacted>"))
            .field("sre_token", &self.sre_token.as_ref().map(|_| "<redacted>"))
            .field("read_token", &self.read_token.as_ref().map(|_| "<redacted>"))
            .field("read_access", &self.read_access)
            .field("tls", &self.tls)
            .field("window_seconds", &self.window_seconds)
            .field("worker_stale_after_ms", &self.worker_stale_after_ms)
            .field("rollback_wait_timeout_ms", &self.rollback_wait_timeout_ms)
            .field("envoy_admin_urls", &self.envoy_admin_urls)
            .field("canary_cluster", &self.canary_cluster)
            .field("notify", &self.notify)
            .field("history_limit", &self.history_limit)
            .field("rollout_tick_ms", &self.rollout_tick_ms)
            .finish()
    }
}

fn invalid(field: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid { field, message: message.to_owned() }
}

fn read_token_file(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::Invalid { field, message: format!("cannot read {}: {error}", path.display()) })?;
    let token = text.trim_end().to_owned();
    if token.is_empty() {
        // An empty secret file is far more likely a deployment mistake than
        // a wish to turn authentication off.
        return Err(ConfigError::Invalid { field, message: format!("{} is empty", path.display()) });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("analyzer.toml"), text)
    }

    fn env_filter(token: &str) -> EnvTokens {
        EnvTokens { filter: Some(token.to_owned()), ..EnvTokens::default() }
    }

    #[test]
    fn defaults_match_the_contract() {
        let config =
            Config::merge(&Cli::default(), FileConfig::default(), EnvTokens::default()).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9190");
        assert_eq!(config.state_dir, PathBuf::from("./canary-state"));
        assert_eq!(config.filter_token, None);
        assert_eq!(config.window_seconds, 60);
        assert_eq!(config.worker_stale_after_ms, 5_000);
        assert_eq!(config.rollback_wait_timeout_ms, 2_000);
    }

    #[test]
    fn flags_win_over_file_and_file_over_env() {
        let parsed = file(
            "listen = \"127.0.0.1:1\"\nstate_dir = \"/from/file\"\nfilter_token = \"file-token\"\nwindow_seconds = 30\n",
        )
        .expect("valid toml");
        let cli = Cli { listen: Some("127.0.0.1:0".into()), ..Cli::default() };
        let config = Config::merge(&cli, parsed.clone(), env_filter("env-token")).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:0");
        assert_eq!(config.state_dir, PathBuf::from("/from/file"));
        assert_eq!(config.filter_token.as_deref(), Some("file-token"));
        assert_eq!(config.window_seconds, 30);

        let config = Config::merge(&Cli::default(), FileConfig::default(), env_filter("env-token")).expect("valid");
        assert_eq!(config.filter_token.as_deref(), Some("env-token"));
        let config = Config::merge(&Cli::default(), FileConfig::default(), env_filter("")).expect("valid");
        assert_eq!(config.filter_token, None, "an empty token turns the check off");
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write token");
        let parsed = FileConfig { filter_token_file: Some(path.clone()), ..FileConfig::default() };
        let config = Config::merge(&Cli::default(), parsed, env_filter("env")).expect("valid");
        assert_eq!(config.filter_token.as_deref(), Some("s3cret"));

        std::fs::write(&path, "\n").expect("write token");
        let parsed = FileConfig { filter_token_file: Some(path), ..FileConfig::default() };
        let error = Config::merge(&Cli::default(), parsed, EnvTokens::default()).expect_err("empty token file");
        assert_eq!(error.field(), Some("filter_token_file"));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let check = |cli: Cli, text: &str, field: &str| {
            let parsed = file(text).expect("valid toml");
            let error = Config::merge(&cli, parsed, EnvTokens::default()).expect_err(text);
            assert_eq!(error.field(), Some(field), "{text}: {error}");
            assert!(error.to_string().starts_with(field), "{error}");
        };
        check(Cli::default(), "listen = \"localhost\"", "listen");
        check(Cli { listen: Some("nope".into()), ..Cli::default() }, "", "listen");
        check(Cli::default(), "state_dir = \"\"", "state_dir");
        check(Cli::default(), "window_seconds = 0", "window_seconds");
        check(Cli::default(), "window_seconds = 601", "window_seconds");
        check(Cli::default(), "worker_stale_after_ms = 0", "worker_stale_after_ms");
        check(Cli::default(), "rollback_wait_timeout_ms = 0", "rollback_wait_timeout_ms");
        check(Cli::default(), "filter_token = \"a\"\nfilter_token_file = \"/b\"", "filter_token_file");
        check(Cli::default(), "filter_token_file = \"/does/not/exist\"", "filter_token_file");
        check(Cli::default(), "canary_cluster = \"\"", "canary_cluster");
        check(Cli::default(), "history_limit = 0", "history_limit");
        check(Cli::default(), "envoy_admin_urls = [\"http://127.0.0.1:9901\", \"ftp://x\"]", "envoy_admin_urls[1]");
        check(Cli::default(), "[[notify]]\nurl = \"hooks.slack.com/x\"\nformat = \"slack\"", "notify[0].url");
        check(
            Cli::default(),
            "[[notify]]\nurl = \"http://127.0.0.1:1/pd\"\nformat = \"pagerduty\"",
            "notify[0].routing_key",
        );
        check(
            Cli::default(),
            "[[notify]]\nurl = \"http://127.0.0.1:1/s\"\nformat = \"slack\"\nrouting_key = \"k\"",
            "notify[0].routing_key",
        );
    }

    #[test]
    fn rollout_settings_parse_with_their_defaults() {
        let config = Config::merge(&Cli::default(), FileConfig::default(), EnvTokens::default()).expect("defaults");
        assert_eq!((config.canary_cluster.as_str(), config.history_limit), ("canary", 100));
        assert!(config.envoy_admin_urls.is_empty() && config.notify.is_empty());
        let parsed = file(
            "envoy_admin_urls = [\"http://127.0.0.1:9901/\"]\ncanary_cluster = \"payments_canary\"\nhistory_limit = 5\n\
             [[notify]]\nurl = \"https://hooks.slack.com/services/T0/B0/X\"\nformat = \"slack\"\n\
             [[notify]]\nurl = \"http://127.0.0.1:8080/pd\"\nformat = \"pagerduty\"\nrouting_key = \"s3cret-key\"\n",
        )
        .expect("valid toml");
        let config = Config::merge(&Cli::default(), parsed, EnvTokens::default()).expect("valid");
        assert_eq!(config.envoy_admin_urls, ["http://127.0.0.1:9901"], "a trailing slash is dropped");
        assert_eq!(config.canary_cluster, "payments_canary");
        assert_eq!(config.history_limit, 5);
        assert_eq!(config.notify[0].format, NotifyFormat::Slack);
        assert_eq!(config.notify[1].routing_key.as_deref(), Some("s3cret-key"));
        assert!(!format!("{config:?}").contains("s3cret-key"), "the routing key is redacted");
        let error = file("[[notify]]\nurl = \"http://x\"\nformat = \"teams\"").expect_err("unknown format");
        assert!(error.to_string().contains("teams"), "{error}");
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let error = file("listne = \"127.0.0.1:1\"").expect_err("unknown key");
        let message = error.to_string();
        assert!(message.contains("analyzer.toml") && message.contains("listne"), "{message}");
        let error = file("window_seconds = \"sixty\"").expect_err("wrong type");
        assert!(error.to_string().contains("window_seconds"), "{error}");
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let mut config = Config::with_state_dir("/tmp/x");
        config.filter_token = Some("s3cret".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn sre_and_read_tokens_follow_the_filter_tokens_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sre_path = dir.path().join("sre");
        std::fs::write(&sre_path, "sre-from-file\n").expect("write token");
        let env =
            EnvTokens { filter: Some("filter-env".into()), sre: Some("sre-env".into()), read: Some("read-env".into()) };
        let parsed = file(&format!("sre_token_file = {sre_path:?}\nread_access = \"token\"\n")).expect("valid toml");
        let config = Config::merge(&Cli::default(), parsed, env.clone()).expect("valid");
        assert_eq!(config.sre_token.as_deref(), Some("sre-from-file"), "the file wins over the environment");
        assert_eq!(config.read_token.as_deref(), Some("read-env"));
        assert_eq!(config.filter_token.as_deref(), Some("filter-env"));
        assert_eq!(config.read_access, ReadAccess::Token);
        let shown = format!("{config:?} {env:?}");
        for secret in ["sre-from-file", "read-env", "filter-env", "sre-env"] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }

        let config = Config::merge(&Cli::default(), FileConfig::default(), EnvTokens::default()).expect("defaults");
        assert_eq!((config.sre_token, config.read_token, config.read_access), (None, None, ReadAccess::Open));
        let only_sre = EnvTokens { sre: Some("s".into()), ..EnvTokens::default() };
        let config = Config::merge(&Cli::default(), FileConfig::default(), only_sre).expect("valid");
        assert_eq!(config.sre_token.as_deref(), Some("s"));
    }

    #[test]
    fn token_roles_and_read_access_are_checked() {
        let check = |text: &str, env: EnvTokens, field: &str, words: &str| {
            let parsed = file(text).expect("valid toml");
            let error = Config::merge(&Cli::default(), parsed, env).expect_err(text);
            assert_eq!(error.field(), Some(field), "{text}: {error}");
            assert!(error.to_string().contains(words), "{error} lacks {words:?}");
        };
        let none = EnvTokens::default;
        check("sre_token = \"a\"\nsre_token_file = \"/b\"", none(), "sre_token_file", "not both");
        check("read_token = \"a\"\nread_token_file = \"/b\"", none(), "read_token_file", "not both");
        check("sre_token_file = \"/does/not/exist\"", none(), "sre_token_file", "cannot read");
        check("sre_token = \"same\"\nfilter_token = \"same\"", none(), "sre_token", "differ");
        check("sre_token = \"s\"\nread_token = \"s\"\nread_access = \"token\"", none(), "read_token", "differ");
        check("read_access = \"token\"", none(), "read_access", "sre_token");
        check("sre_token = \"s\"\nread_token = \"r\"", none(), "read_token", "read_access");
        check("sre_token = \"has space\"", none(), "sre_token", "printable ASCII");
        check("", EnvTokens { sre: Some("tab\there".into()), ..none() }, "sre_token", "printable ASCII");
        let error = file("read_access = \"public\"").expect_err("unknown mode");
        assert!(error.to_string().contains("public"), "{error}");
    }

    #[test]
    fn non_loopback_listen_needs_both_tokens() {
        let both = EnvTokens { filter: Some("f".into()), sre: Some("s".into()), read: None };
        let only_filter = EnvTokens { filter: Some("f".into()), ..EnvTokens::default() };
        let only_sre = EnvTokens { sre: Some("s".into()), ..EnvTokens::default() };
        for listen in ["0.0.0.0:9190", "10.1.2.3:9190", "[::]:9190", "[2001:db8::1]:9190", "[::ffff:10.0.0.1]:1"] {
            let cli = Cli { listen: Some(listen.into()), ..Cli::default() };
            for (env, missing) in [
                (EnvTokens::default(), &["sre_token", "filter_token"][..]),
                (only_filter.clone(), &["sre_token"][..]),
                (only_sre.clone(), &["filter_token"][..]),
            ] {
                let error = Config::merge(&cli, FileConfig::default(), env).expect_err(listen);
                let message = error.to_string();
                assert_eq!(error.field(), Some("listen"), "{message}");
                assert!(message.contains("not a loopback address"), "{message}");
                for key in missing {
                    assert!(message.contains(&format!("set {key}")) || message.contains(&format!("and {key}")));
                }
            }
            let config = Config::merge(&cli, FileConfig::default(), both.clone()).expect("both tokens");
            assert_eq!(config.listen.to_string().replace(['[', ']'], ""), listen.replace(['[', ']'], ""));
        }
        for listen in ["127.0.0.1:0", "127.8.9.10:1", "[::1]:0", "[::ffff:127.0.0.1]:1"] {
            let cli = Cli { listen: Some(listen.into()), ..Cli::default() };
            Config::merge(&cli, FileConfig::default(), EnvTokens::default()).expect("loopback needs no token");
        }
    }

    #[test]
    fn tls_needs_both_files() {
        let parsed = file("tls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"").expect("valid toml");
        let config = Config::merge(&Cli::default(), parsed, EnvTokens::default()).expect("valid");
        assert_eq!(
            config.tls,
            Some(TlsFiles { cert_file: PathBuf::from("/c.pem"), key_file: PathBuf::from("/k.pem") })
        );
        for (text, field) in
            [("tls_cert_file = \"/c.pem\"", "tls_key_file"), ("tls_key_file = \"/k.pem\"", "tls_cert_file")]
        {
            let error =
                Config::merge(&Cli::default(), file(text).expect("toml"), EnvTokens::default()).expect_err(text);
            assert_eq!(error.field(), Some(field), "{error}");
            assert!(error.to_string().contains("both or neither"), "{error}");
        }
    }

    #[test]
    fn cli_parses_the_documented_flags() {
        let cli =
            Cli::try_parse_from(["canary-analyzer", "--listen", "127.0.0.1:0", "--state-dir", "/s", "--config", "/c"])
                .expect("documented flags");
        assert_eq!(cli.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(cli.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(cli.config, Some(PathBuf::from("/c")));
    }
}
