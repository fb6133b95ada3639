//! The command line, as clap types. Parsing of values that the API would
//! refuse (a weight with three decimals, a gradual ramp over an hour) happens
//! here too, so a typo is named before any request is sent.

use std::path::PathBuf;
use std::time::Duration;

use canary_protocol::CanaryWeight;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::wait::Until;

/// Longest gradual rollback the analyzer accepts (`MAX_GRADUAL_SECONDS`).
pub const MAX_GRADUAL_SECONDS: u32 = 3_600;
/// Longest `?wait=true` the analyzer accepts (`MAX_WAIT_TIMEOUT_MS`).
pub const MAX_WAIT_TIMEOUT_MS: u64 = 600_000;

/// The exit codes, shown by `canaryctl --help` and kept in step with
/// `crate::exit`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success; for `wait`: the rollout was promoted (or, with --until approval,
     reached a manual approval gate)
  1  `wait`: the rollout was rolled back or failed;
     other commands: the analyzer refused the request (the message says why)
  2  `wait`: the rollout was still in progress when --timeout ran out
  3  the analyzer could not be reached or refused to answer (`wait`: for
     longer than --timeout, or with a 401/403), or there is no rollout to wait for
  64 the command line is wrong (unknown flag, bad value)

Environment:
  CANARY_ADDR        analyzer address (--addr)
  CANARY_SRE_TOKEN   SRE token, for every change and for reads (--token)
  CANARY_SRE_TOKEN_FILE  file holding the SRE token (--token-file)
  CANARY_READ_TOKEN  read-only token for status, history, assignment (--read-token)
  CANARY_ACTOR       who acts, recorded with every decision (--actor)
  CANARY_CA_FILE     PEM CA certificates for an https:// analyzer (--ca-file)";

/// Command-line client of the canary analyzer's API: watch a rollout, steer
/// it, and gate a pipeline stage on its outcome.
#[derive(Debug, Parser)]
#[command(name = "canaryctl", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Analyzer address: http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "CANARY_ADDR", default_value = "http://127.0.0.1:9190", global = true)]
    pub addr: String,
    /// SRE bearer token: needed for every change when the analyzer has one, and accepted for reads.
    #[arg(long, env = "CANARY_SRE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the SRE token (trailing whitespace ignored); wins over --token.
    #[arg(long, value_name = "FILE", env = "CANARY_SRE_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Read-only bearer token for status, history and assignment; the SRE token is used when absent.
    #[arg(long, env = "CANARY_READ_TOKEN", hide_env_values = true, global = true)]
    pub read_token: Option<String>,
    /// Who acts, recorded with each decision (the analyzer records `api` when absent).
    #[arg(long, env = "CANARY_ACTOR", global = true)]
    pub actor: Option<String>,
    /// `text` for people, `json` (the API's own JSON) for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
    /// Deadline of each HTTP request, e.g. 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", global = true)]
    pub request_timeout: Duration,
    /// PEM CA certificates trusted for an https:// address instead of the public roots.
    #[arg(long, value_name = "FILE", env = "CANARY_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the rollout: phase, step, weight, per-version table, last decisions.
    Status {
        /// Redraw every --interval until the rollout is promoted, rolled back or failed.
        #[arg(long, short)]
        watch: bool,
        /// Time between redraws with --watch.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
        interval: Duration,
        /// How many of the last decisions to show.
        #[arg(long, value_name = "N", default_value_t = 5)]
        decisions: usize,
    },
    /// Start a rollout from a spec file (YAML or JSON, by extension).
    Start {
        /// The rollout spec, e.g. envoy-config/rollouts/default-canary.yaml; `-` reads stdin.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Set the canary weight (manual strategy, or no rollout), in percent with up to two decimals.
    SetWeight {
        /// Canary percent, 0..=100 with at most two decimals, e.g. 0.5 or 25.
        #[arg(value_name = "PERCENT", value_parser = parse_percent)]
        percent: CanaryWeight,
        #[command(flatten)]
        reason: ReasonArg,
        #[command(flatten)]
        wait: PropagationArgs,
    },
    /// Promote the rollout to its next step, or to 100% with --full.
    Promote {
        /// Go straight to 100% and end the rollout as promoted.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Freeze the weights; the analysis keeps running.
    Pause {
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Continue a paused rollout.
    Resume {
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Pass a manual approval gate (`pause: {untilApproved: true}`, blue-green pre-checks).
    Approve {
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Send all traffic back to stable, at once or ramped down over --gradual SECONDS.
    Rollback {
        /// Ramp the canary down to 0% over this many seconds (0..=3600) instead of at once.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_GRADUAL_SECONDS)))]
        gradual: Option<u32>,
        #[command(flatten)]
        reason: ReasonArg,
        #[command(flatten)]
        wait: PropagationArgs,
    },
    /// List finished rollouts, newest first.
    History {
        /// Show at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Which version a sticky key (header or cookie value) is sent to now.
    Assignment {
        /// The sticky key, e.g. user-42.
        key: String,
    },
    /// Wait for the rollout to end: exit 0 promoted, 1 rolled back or failed, 2 timed out, 3 unreachable.
    Wait {
        /// Give up after this long, e.g. 30m or 90s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30m")]
        timeout: Duration,
        /// Time between polls.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
        interval: Duration,
        /// `done`: until promoted, rolled back or failed; `approval`: also stop (exit 0) at a manual approval gate.
        #[arg(long, value_enum, default_value_t = Until::Done)]
        until: Until,
        /// Wait for this rollout id (as `start` prints it); another current rollout is an error.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Print a shell completion script, e.g. `canaryctl completions bash > /etc/bash_completion.d/canaryctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ReasonArg {
    /// Why, recorded with the decision and sent with notifications.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `?wait=true`: answer once every live worker applied the new weights.
#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// Wait until every live Envoy worker confirms the new weights.
    #[arg(long)]
    pub wait: bool,
    /// How long the analyzer waits for the confirmations with --wait (up to 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_timeout, requires = "wait")]
    pub wait_timeout: Option<Duration>,
}

/// A duration such as `90s`, `30m`, `1h 30m` or `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?} is not a duration ({error}); write e.g. 90s, 30m or 1h"))?;
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(duration)
}

fn parse_wait_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.as_millis() > u128::from(MAX_WAIT_TIMEOUT_MS) {
        return Err(format!("{text:?} is longer than the analyzer's limit of 10m"));
    }
    if duration.as_millis() == 0 {
        return Err(format!("{text:?} is shorter than 1ms"));
    }
    Ok(duration)
}

/// A canary percent as an SRE types it: `25`, `0.5`, `12.34` or `25%`.
/// The rules are the API's (`CanaryWeight::from_percent`), checked before
/// sending so the message names the value typed.
pub fn parse_percent(text: &str) -> Result<CanaryWeight, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
    let percent: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a number; give the canary percent, e.g. 25 or 0.5"))?;
    CanaryWeight::from_percent(percent).map_err(|_| {
        if !(0.0..=100.0).contains(&percent) {
            format!("{text:?} is outside 0..=100")
        } else {
            format!("{text:?} has more than two decimals; the split's resolution is 0.01%")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_table() {
        for (text, expected) in [
            ("25", Ok(2_500)),
            ("25%", Ok(2_500)),
            (" 0.5 ", Ok(50)),
            ("12.34", Ok(1_234)),
            ("0", Ok(0)),
            ("100", Ok(10_000)),
            ("0.01", Ok(1)),
            ("12.345", Err("\"12.345\" has more than two decimals")),
            ("101", Err("\"101\" is outside 0..=100")),
            ("-1", Err("\"-1\" is outside 0..=100")),
            ("NaN", Err("\"NaN\" is outside 0..=100")),
            ("ten", Err("\"ten\" is not a number")),
            ("", Err("\"\" is not a number")),
        ] {
            match (parse_percent(text), expected) {
                (Ok(weight), Ok(bp)) => assert_eq!(weight.bp(), bp, "{text}"),
                (Err(message), Err(words)) => assert!(message.starts_with(words), "{text}: {message}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn duration_table() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_duration("soon").unwrap_err().contains("write e.g. 90s"));
        assert!(parse_wait_timeout("11m").unwrap_err().contains("limit of 10m"));
        assert_eq!(parse_wait_timeout("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn command_line_shapes() {
        let cli = Cli::try_parse_from(["canaryctl", "rollback", "--gradual", "60", "--reason", "p95 up"]).unwrap();
        match cli.command {
            Command::Rollback { gradual, reason, wait } => {
                assert_eq!(gradual, Some(60));
                assert_eq!(reason.reason.as_deref(), Some("p95 up"));
                assert!(!wait.wait);
            }
            other => panic!("{other:?}"),
        }
        let error = Cli::try_parse_from(["canaryctl", "rollback", "--gradual", "4000"]).unwrap_err().to_string();
        assert!(error.contains("4000"), "{error}");
        let error = Cli::try_parse_from(["canaryctl", "set-weight", "12.345"]).unwrap_err().to_string();
        assert!(error.contains("more than two decimals"), "{error}");
        let error = Cli::try_parse_from(["canaryctl", "set-weight", "5", "--wait-timeout", "5s"]).unwrap_err();
        assert!(error.to_string().contains("--wait"), "{error}");
        let cli = Cli::try_parse_from(["canaryctl", "--output", "json", "wait", "--timeout", "90s"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(matches!(cli.command, Command::Wait { timeout, .. } if timeout == Duration::from_secs(90)));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
