//! `canaryctl`: the SRE's command line for the canary analyzer's HTTP API.
//!
//! It shows a rollout (`status`, `--watch` for a live view), acts on it
//! (`start`, `set-weight`, `promote`, `pause`, `resume`, `approve`,
//! `rollback`), reads the past (`history`, `assignment`) and gates a
//! pipeline stage on the outcome (`wait`, with exit codes 0 promoted,
//! 1 rolled back or failed, 2 timed out, 3 unreachable).
//!
//! The pure parts are modules of their own, each tested without a socket:
//! [`request`] maps an action to method, path and body, [`render`] turns the
//! API's JSON into text, [`wait`] decides when waiting ends and with which
//! exit code. This file and [`client`] are the shell: arguments, HTTP,
//! sleeping and printing.

mod cli;
mod client;
#[cfg(test)]
mod fixtures;
mod render;
mod request;
mod view;
mod wait;

use std::io::{IsTerminal, Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cli::{Cli, Command, GlobalArgs, OutputFormat, PropagationArgs};
use crate::client::{CallError, Client, Settings};
use crate::request::{Action, Propagation};
use crate::view::{Assignment, FullView, HistoryEntry, RolloutView, WeightChange};
use crate::wait::{Next, Poll, Waiter, exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Help and --version print to stdout and succeed; a wrong
            // command line is 64, kept apart from `wait`'s 2 (timed out).
            return ExitCode::from(if error.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "canaryctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // One thread: a CLI waits on one request at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("canaryctl: cannot start the async runtime: {error}");
            return ExitCode::from(exit::UNKNOWN);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

/// Why a command did not succeed.
enum Failure {
    /// Before any request: a bad address, an unreadable file.
    Setup(anyhow::Error),
    Call(CallError),
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        Failure::Call(error)
    }
}

async fn run(cli: Cli) -> u8 {
    let output = cli.global.output;
    let result = match connect(&cli.global) {
        Ok(client) => execute(&client, cli.command, output).await,
        Err(error) => Err(Failure::Setup(error)),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Setup(error)) => {
            report(output, &format!("{error:#}"), None, None);
            exit::USAGE
        }
        Err(Failure::Call(error)) => {
            // A 504 of set-weight or rollback still carries what was applied.
            if output == OutputFormat::Text
                && let CallError::Refused { status: 504, body, .. } = &error
                && let Ok(change) = serde_json::from_value::<WeightChange>(body.clone())
            {
                print!("{}", render::weight_change(&change));
            }
            report(output, &error.to_string(), error.hint(), error.status());
            match error {
                CallError::Refused { .. } => exit::FAILED,
                _ => exit::UNKNOWN,
            }
        }
    }
}

/// Prints an error: text on stderr, or a JSON object on stdout for scripts.
fn report(output: OutputFormat, message: &str, hint: Option<String>, status: Option<u16>) {
    match output {
        OutputFormat::Text => {
            eprintln!("error: {message}");
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
        }
        OutputFormat::Json => {
            println!("{}", json!({"error": message, "hint": hint, "status": status}));
        }
    }
}

fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    let base_url = client::base_url(&global.addr).map_err(anyhow::Error::msg)?;
    let sre_token = match &global.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => global.token.clone().filter(|token| !token.is_empty()),
    };
    let settings = Settings {
        base_url,
        sre_token,
        read_token: global.read_token.clone().filter(|token| !token.is_empty()),
        actor: global.actor.clone(),
        request_timeout: global.request_timeout,
    };
    Client::new(settings, global.ca_file.as_deref())
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?;
    let token = text.trim_end().to_owned();
    anyhow::ensure!(!token.is_empty(), "--token-file {} is empty", path.display());
    Ok(token)
}

async fn execute(client: &Client, command: Command, output: OutputFormat) -> Result<u8, Failure> {
    match command {
        Command::Status { watch: false, decisions, .. } => {
            let (raw, view) = get_rollout(client, None).await?;
            print_either(output, &raw, || render::status(&view, decisions));
            Ok(exit::OK)
        }
        Command::Status { watch: true, interval, decisions } => watch(client, interval, decisions, output).await,
        Command::Start { file, reason } => {
            let spec = read_spec(&file).map_err(Failure::Setup)?;
            let json = file.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
            let raw = send_json(client, &Action::Start { spec, json, reason: reason.reason }).await?;
            let rollout: RolloutView = decode(&raw)?;
            print_either(output, &raw, || {
                format!("started rollout {} (id {})\n{}\n", rollout.name, rollout.id, render::rollout_line(&rollout))
            });
            Ok(exit::OK)
        }
        Command::SetWeight { percent, reason, wait } => {
            let action = Action::SetWeight { weight: percent, reason: reason.reason, wait: propagation(&wait) };
            weight_change(client, &action, output).await
        }
        Command::Rollback { gradual, reason, wait } => {
            let action = Action::Rollback { gradual_seconds: gradual, reason: reason.reason, wait: propagation(&wait) };
            weight_change(client, &action, output).await
        }
        Command::Promote { full, reason } => {
            rollout_command(client, &Action::Promote { full, reason: reason.reason }, output).await
        }
        Command::Pause { reason } => rollout_command(client, &Action::Pause { reason: reason.reason }, output).await,
        Command::Resume { reason } => rollout_command(client, &Action::Resume { reason: reason.reason }, output).await,
        Command::Approve { reason } => {
            rollout_command(client, &Action::Approve { reason: reason.reason }, output).await
        }
        Command::History { limit } => {
            let raw = send_json(client, &Action::History).await?;
            let entries: Vec<HistoryEntry> = decode(&raw)?;
            let raw = match (raw, limit) {
                (Value::Array(items), Some(limit)) => Value::Array(items.into_iter().take(limit).collect()),
                (raw, _) => raw,
            };
            print_either(output, &raw, || render::history(&entries, limit));
            Ok(exit::OK)
        }
        Command::Assignment { key } => {
            let raw = send_json(client, &Action::Assignment { key }).await?;
            let assignment: Assignment = decode(&raw)?;
            print_either(output, &raw, || render::assignment(&assignment));
            Ok(exit::OK)
        }
        Command::Wait { timeout, interval, until, id } => {
            Ok(wait_for_outcome(client, Waiter::new(timeout, until, id), timeout, interval, output).await)
        }
        // Handled before the runtime starts.
        Command::Completions { .. } => Ok(exit::OK),
    }
}

fn propagation(args: &PropagationArgs) -> Option<Propagation> {
    args.wait.then_some(Propagation { timeout: args.wait_timeout })
}

async fn weight_change(client: &Client, action: &Action, output: OutputFormat) -> Result<u8, Failure> {
    let raw = send_json(client, action).await?;
    let change: WeightChange = decode(&raw)?;
    print_either(output, &raw, || render::weight_change(&change));
    Ok(exit::OK)
}

/// Promote, pause, resume, approve: the answer is the rollout after it.
async fn rollout_command(client: &Client, action: &Action, output: OutputFormat) -> Result<u8, Failure> {
    let raw = send_json(client, action).await?;
    let rollout: Option<RolloutView> = decode(&raw)?;
    print_either(output, &raw, || match &rollout {
        Some(rollout) => format!("{}\n", render::rollout_line(rollout)),
        None => "done\n".to_owned(),
    });
    Ok(exit::OK)
}

async fn send_json(client: &Client, action: &Action) -> Result<Value, CallError> {
    client.send(&action.request(), None).await?.json()
}

async fn get_rollout(client: &Client, timeout: Option<Duration>) -> Result<(Value, FullView), CallError> {
    let raw = client.send(&Action::GetRollout.request(), timeout).await?.json()?;
    let view = decode(&raw)?;
    Ok((raw, view))
}

fn decode<T: DeserializeOwned>(raw: &Value) -> Result<T, CallError> {
    serde_json::from_value(raw.clone()).map_err(|error| CallError::BadAnswer {
        status: 200,
        detail: format!("the answer does not have the expected shape ({error})"),
    })
}

/// The API's JSON as it came (pretty), or the text rendering.
fn print_either(output: OutputFormat, raw: &Value, text: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(raw).unwrap_or_else(|_| raw.to_string())),
        OutputFormat::Text => print!("{}", text()),
    }
}

/// A spec file, or standard input for `-`.
fn read_spec(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut spec = Vec::new();
        std::io::stdin().read_to_end(&mut spec).context("-f -: cannot read standard input")?;
        return Ok(spec);
    }
    std::fs::read(path).with_context(|| format!("-f {}: cannot read the rollout spec", path.display()))
}

/// `status --watch`: a redrawn screen on a terminal, a line per change
/// otherwise (a log or a pipe), until the rollout ends.
async fn watch(client: &Client, interval: Duration, decisions: usize, output: OutputFormat) -> Result<u8, Failure> {
    let terminal = std::io::stdout().is_terminal() && output == OutputFormat::Text;
    let mut last_printed: Option<String> = None;
    loop {
        let (printed, done) = match get_rollout(client, None).await {
            Ok((raw, view)) => {
                let done = view.rollout.as_ref().is_some_and(|rollout| rollout.phase.is_terminal());
                let text = match output {
                    _ if terminal => format!(
                        "\x1b[2J\x1b[H{} every {} (Ctrl-C to stop)\n\n{}",
                        client.base_url(),
                        humantime::format_duration(interval),
                        render::status(&view, decisions)
                    ),
                    OutputFormat::Json => raw.to_string(),
                    OutputFormat::Text => render::summary_line(&view),
                };
                (Some((render::change_key(&view), text)), done)
            }
            // A live view outlasts a restart of the analyzer.
            Err(error) if error.retryable() => {
                let text = format!("{error}; retrying");
                (Some((text.clone(), text)), false)
            }
            Err(error) => return Err(error.into()),
        };
        if let Some((key, text)) = printed
            && (terminal || last_printed.as_ref() != Some(&key))
        {
            if terminal {
                print!("{text}");
            } else {
                println!("{text}");
            }
            let _ = std::io::stdout().flush();
            last_printed = Some(key);
        }
        if done {
            return Ok(exit::OK);
        }
        tokio::time::sleep(interval).await;
    }
}

/// `wait`: polls until the rollout ends or the timeout passes. Progress
/// goes to stderr, the outcome to stdout.
async fn wait_for_outcome(
    client: &Client,
    mut waiter: Waiter,
    timeout: Duration,
    interval: Duration,
    output: OutputFormat,
) -> u8 {
    let started = Instant::now();
    let mut last_rollout = Value::Null;
    loop {
        let remaining = timeout.saturating_sub(started.elapsed());
        // A poll near the deadline still gets a second to answer.
        let polled = get_rollout(client, Some(remaining.max(Duration::from_secs(1)))).await;
        let elapsed = started.elapsed();
        let failure_text = |error: &CallError| match error.hint() {
            Some(hint) => format!("{error} ({hint})"),
            None => error.to_string(),
        };
        let next = match &polled {
            Ok((raw, view)) => {
                last_rollout = raw.get("rollout").cloned().unwrap_or(Value::Null);
                waiter.observe(Poll::View(view), elapsed)
            }
            Err(error) if error.retryable() => waiter.observe(Poll::Unavailable(&failure_text(error)), elapsed),
            Err(error) => waiter.observe(Poll::Refused(&failure_text(error)), elapsed),
        };
        match next {
            Next::Continue { line } => {
                if let Some(line) = line {
                    eprintln!("[{:>6}] {line}", format!("+{}s", elapsed.as_secs()));
                }
            }
            Next::Finish { code, message } => {
                match output {
                    OutputFormat::Text => println!("{message}"),
                    OutputFormat::Json => {
                        println!("{}", json!({"exit_code": code, "message": message, "rollout": last_rollout}));
                    }
                }
                return code;
            }
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        // Past the deadline, one more poll decides between 2 and 3.
        tokio::time::sleep(interval.min(remaining)).await;
    }
}
