//! Command line and configuration file.
//!
//! Three sources, strongest first: command-line flags, the TOML file named by
//! `--config`, then the environment (`CANARY_FILTER_TOKEN`, only for the
//! filter token). Every value is validated once here, and an error names the
//! field it is about, so the rest of the analyzer works with a [`Config`]
//! that is known to be sane.

use std::fmt;
use std::net::SocketAddr;
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
    /// flags and `env_filter_token` (the value of `CANARY_FILTER_TOKEN`).
    pub fn load(cli: &Cli, env_filter_token: Option<String>) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })?;
                Some(FileConfig::parse(path, &text)?)
            }
            None => None,
        };
        Config::merge(cli, file.unwrap_or_default(), env_filter_token)
    }

    /// Merges already-parsed sources; flags win over the file, the file over
    /// the environment.
    pub fn merge(cli: &Cli, file: FileConfig, env_filter_token: Option<String>) -> Result<Config, ConfigError> {
        let listen_text = cli.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|error| ConfigError::Invalid {
            field: "listen",
            message: format!("{listen_text:?} is not an IP:port address ({error})"),
        })?;
        let state_dir = cli.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }

        let file_token = match (file.filter_token, file.filter_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("filter_token_file", "set either filter_token or filter_token_file, not both"));
            }
            (Some(token), None) => Some(token),
            (None, Some(path)) => Some(read_token_file(&path)?),
            (None, None) => None,
        };
        // An empty token means "no token", as in the filter's configuration.
        let filter_token = file_token.or(env_filter_token).filter(|token| !token.is_empty());

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

// The token is a secret: keep it out of logs and panic messages.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("filter_token", &self.filter_token.as_ref().map(|_| "<redacted>"))
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

fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Invalid {
        field: "filter_token_file",
        message: format!("cannot read {}: {error}", path.display()),
    })?;
    let token = text.trim_end().to_owned();
    if token.is_empty() {
        // An empty secret file is far more likely a deployment mistake than
        // a wish to turn authentication off.
        return Err(ConfigError::Invalid {
            field: "filter_token_file",
            message: format!("{} is empty", path.display()),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("analyzer.toml"), text)
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::merge(&Cli::default(), FileConfig::default(), None).expect("defaults are valid");
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
        let config = Config::merge(&cli, parsed.clone(), Some("env-token".into())).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:0");
        assert_eq!(config.state_dir, PathBuf::from("/from/file"));
        assert_eq!(config.filter_token.as_deref(), Some("file-token"));
        assert_eq!(config.window_seconds, 30);

        let config = Config::merge(&Cli::default(), FileConfig::default(), Some("env-token".into())).expect("valid");
        assert_eq!(config.filter_token.as_deref(), Some("env-token"));
        let config = Config::merge(&Cli::default(), FileConfig::default(), Some(String::new())).expect("valid");
        assert_eq!(config.filter_token, None, "an empty token turns the check off");
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write token");
        let parsed = FileConfig { filter_token_file: Some(path.clone()), ..FileConfig::default() };
        let config = Config::merge(&Cli::default(), parsed, Some("env".into())).expect("valid");
        assert_eq!(config.filter_token.as_deref(), Some("s3cret"));

        std::fs::write(&path, "\n").expect("write token");
        let parsed = FileConfig { filter_token_file: Some(path), ..FileConfig::default() };
        let error = Config::merge(&Cli::default(), parsed, None).expect_err("empty token file");
        assert_eq!(error.field(), Some("filter_token_file"));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let check = |cli: Cli, text: &str, field: &str| {
            let parsed = file(text).expect("valid toml");
            let error = Config::merge(&cli, parsed, None).expect_err(text);
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
        let config = Config::merge(&Cli::default(), FileConfig::default(), None).expect("defaults");
        assert_eq!((config.canary_cluster.as_str(), config.history_limit), ("canary", 100));
        assert!(config.envoy_admin_urls.is_empty() && config.notify.is_empty());
        let parsed = file(
            "envoy_admin_urls = [\"http://127.0.0.1:9901/\"]\ncanary_cluster = \"payments_canary\"\nhistory_limit = 5\n\
             [[notify]]\nurl = \"https://hooks.slack.com/services/T0/B0/X\"\nformat = \"slack\"\n\
             [[notify]]\nurl = \"http://127.0.0.1:8080/pd\"\nformat = \"pagerduty\"\nrouting_key = \"s3cret-key\"\n",
        )
        .expect("valid toml");
        let config = Config::merge(&Cli::default(), parsed, None).expect("valid");
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
    fn cli_parses_the_documented_flags() {
        let cli =
            Cli::try_parse_from(["canary-analyzer", "--listen", "127.0.0.1:0", "--state-dir", "/s", "--config", "/c"])
                .expect("documented flags");
        assert_eq!(cli.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(cli.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(cli.config, Some(PathBuf::from("/c")));
    }
}
