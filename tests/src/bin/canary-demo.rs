//! The canary demo (`cargo xtask demo`): a real Envoy with the filter, the
//! analyzer, and two backends under steady load, while the analyzer runs an
//! automated progressive rollout with compressed steps (10% → 25% → 50% →
//! 100%, a few seconds each instead of 30 minutes).
//!
//! `--canary good` (the default) deploys a canary that behaves like stable;
//! the analysis finds nothing and it is promoted to 100%. `--canary bad`
//! deploys one with about 5% errors and 50% more latency; the sequential
//! test catches it and the analyzer rolls it back on its own.
//!
//! While it runs, the demo prints what the brief's deployment dashboard
//! shows: the phase and a progress bar, a per-version table with traffic
//! share, requests, error rate and p95 checked against the step gates, the
//! latest analysis verdict with its e-values, and every decision as it is
//! taken. It ends with a summary: the outcome, the time to each decision,
//! and a check that every request was counted exactly once. `--manual`
//! runs the issue-2 demo instead: an operator walking the weight by hand.
//!
//! Everything it starts is stopped when it ends, also on Ctrl-C.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canary_protocol::Version;
use canary_tests::rollout::{decisions_of, phase, phase_of, rollout_of};
use canary_tests::{BackendOpts, Binaries, Load, LoadReport, Ports, Stack};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Automated canary rollout on a real Envoy: promotion of a good canary, rollback of a bad one")]
struct Args {
    /// How the canary behaves: `good` is like stable; `bad` has ~5% errors
    /// and +50% latency.
    #[arg(long, value_enum, default_value_t = CanaryKind::Good)]
    canary: CanaryKind,
    /// Seconds each step is held (the brief holds 30 minutes).
    #[arg(long, default_value_t = 8)]
    step_seconds: u64,
    /// Steady client load through Envoy.
    #[arg(long, default_value_t = 450.0)]
    requests_per_second: f64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Client connections carrying the load. Few, like a steady client:
    /// every connection Envoy must open to a version in the middle of a step
    /// makes that version look slower for a moment.
    #[arg(long, default_value_t = 6)]
    connections: usize,
    /// Walk the weights by hand as an operator (the issue-2 demo) instead of
    /// running an automated rollout.
    #[arg(long)]
    manual: bool,
    /// With `--manual`: the canary weights to walk through, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0.01,1,10,25,50")]
    steps_percent: Vec<f64>,
    /// With `--manual`: how long each weight is held.
    #[arg(long, default_value_t = 6)]
    hold_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CanaryKind {
    Good,
    Bad,
}

impl CanaryKind {
    fn as_str(self) -> &'static str {
        match self {
            CanaryKind::Good => "good",
            CanaryKind::Bad => "bad",
        }
    }
}

/// What the backends inject. Stable: 0.1% errors, 2–4 ms. A good canary is
/// the same; a bad one has 5% errors and 3–6 ms (+50% on average).
struct Behaviour {
    error_rate: f64,
    latency_ms: u64,
    latency_jitter_ms: u64,
}

impl Behaviour {
    const STABLE: Behaviour = Behaviour { error_rate: 0.001, latency_ms: 2, latency_jitter_ms: 2 };
    const BAD_CANARY: Behaviour = Behaviour { error_rate: 0.05, latency_ms: 3, latency_jitter_ms: 3 };

    fn opts(&self) -> BackendOpts {
        BackendOpts::default()
            .error_rate(self.error_rate)
            .latency_ms(self.latency_ms)
            .latency_jitter_ms(self.latency_jitter_ms)
    }

    fn describe(&self) -> String {
        format!(
            "{:.1}% errors, {}-{} ms",
            self.error_rate * 100.0,
            self.latency_ms,
            self.latency_ms + self.latency_jitter_ms
        )
    }
}

const STABLE_VERSION: &str = "v1.4.0";
const CANARY_VERSION: &str = "v1.5.0";
/// The brief's step schedule, compressed.
const STEP_WEIGHTS: [u32; 4] = [10, 25, 50, 100];
/// The brief's step gates, stated in the spec so the demo shows them.
const GATE_MAX_ERROR_RATE: f64 = 0.01;
const GATE_MAX_P95_MS: f64 = 200.0;
const GATE_MIN_THROUGHPUT_RATIO: f64 = 0.9;
/// How often the dashboard is refreshed.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Without a terminal to redraw in, print the dashboard this often (and on
/// every change of step or phase).
const PLAIN_PRINT_INTERVAL: Duration = Duration::from_secs(4);
/// Traffic kept flowing after the decision, to show where it goes.
const AFTER_DECISION: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    // Returning from main (also on a signal) drops the stack, which kills
    // every process the demo started.
    tokio::select! {
        result = run(&args, started) => result,
        _ = canary_tests::process::shutdown_signal() => {
            println!("\ninterrupted: stopping everything the demo started");
            Ok(())
        }
    }
}

async fn run(args: &Args, started: Instant) -> anyhow::Result<()> {
    let canary = match args.canary {
        CanaryKind::Good => Behaviour::STABLE,
        CanaryKind::Bad => Behaviour::BAD_CANARY,
    };
    println!("canary demo: starting stable and canary backends, the analyzer, and Envoy with the canary filter");
    let mut builder = Stack::builder()
        .binaries(Binaries::from_env())
        .concurrency(args.concurrency)
        .ports(Ports::contract_defaults_if_free())
        // The contract's default interval: what production would run.
        .filter_config(json!({ "report_interval_ms": 1000, "proxy_id": "envoy-demo" }))
        .stable(Behaviour::STABLE.opts())
        .canary(canary.opts())
        .without_permit();
    if !args.manual {
        // The rollout's gates include the canary hosts' health.
        builder = builder.envoy_host_health();
    }
    let stack = builder.start().await?;
    println!(
        "  envoy listener http://{}   envoy admin http://{}   analyzer http://{}\n  web dashboard: open http://{}/ \
         in a browser (`--step-seconds 60` leaves time to watch)",
        stack.listener(),
        stack.admin(),
        stack.analyzer_address(),
        stack.analyzer_address()
    );
    println!(
        "  stable {STABLE_VERSION}: {}   canary {CANARY_VERSION} ({}): {}\n  load: {:.0} req/s on {} connections, {} \
         Envoy workers\n",
        Behaviour::STABLE.describe(),
        args.canary.as_str(),
        canary.describe(),
        args.requests_per_second,
        args.connections,
        args.concurrency
    );
    let load = stack.start_background_load(
        Load::requests(u64::MAX)
            .rate_per_second(args.requests_per_second)
            .concurrency(args.connections)
            .max_duration(Duration::from_secs(600)),
    );
    if args.manual {
        manual::walk(&stack, args, started).await?;
        let report = load.stop().await;
        return manual::print_summary(&stack, &report, started).await;
    }
    let outcome = automated_rollout(&stack, args).await;
    let report = load.stop().await;
    let outcome = outcome?;
    print_summary(&stack, &report, &outcome).await?;
    let expected = match args.canary {
        CanaryKind::Good => phase::PROMOTED,
        CanaryKind::Bad => phase::ROLLED_BACK,
    };
    if outcome.phase != expected {
        bail!("the {} canary ended {} instead of {expected}", args.canary.as_str(), outcome.phase);
    }
    Ok(())
}

/// What the rollout did, for the summary.
struct RolloutOutcome {
    phase: String,
    started_unix_ms: u64,
    decisions: Vec<Value>,
    /// Backends' counts when the decision was seen and at the end.
    served_at_decision: [u64; 2],
    served_at_end: [u64; 2],
}

/// The compressed spec: each weight of [`STEP_WEIGHTS`] but the last is
/// held for `step_seconds`, with the brief's gates and a small evidence
/// minimum so a step of a few seconds can pass.
fn demo_spec(step_seconds: u64) -> Value {
    let mut steps = Vec::new();
    for (index, weight) in STEP_WEIGHTS.iter().enumerate() {
        steps.push(json!({ "setWeight": weight }));
        if index + 1 < STEP_WEIGHTS.len() {
            steps.push(json!({ "pause": { "duration": format!("{step_seconds}s") } }));
        }
    }
    json!({
        "name": "payment-service",
        "canaryVersion": CANARY_VERSION,
        "stableVersion": STABLE_VERSION,
        "strategy": "canary",
        "failurePolicy": "rollback",
        "analysis": {
            "minCanaryRequests": 150,
            "gates": {
                "maxErrorRate": GATE_MAX_ERROR_RATE,
                "maxP95": format!("{GATE_MAX_P95_MS}ms"),
                "minThroughputRatio": GATE_MIN_THROUGHPUT_RATIO,
            },
        },
        "steps": steps,
    })
}

async fn automated_rollout(stack: &Stack, args: &Args) -> anyhow::Result<RolloutOutcome> {
    let spec = demo_spec(args.step_seconds);
    println!(
        "rollout spec: {} with {} s pauses (the brief: 30 min), gates: errors < {}%, p95 < {} ms, canary throughput \
         >= {}% of its share; evidence minimum 150 canary requests per step",
        STEP_WEIGHTS.map(|weight| format!("{weight}%")).join(" -> "),
        args.step_seconds,
        GATE_MAX_ERROR_RATE * 100.0,
        GATE_MAX_P95_MS,
        GATE_MIN_THROUGHPUT_RATIO * 100.0
    );
    let started_unix_ms = unix_now_ms();
    let started = Instant::now();
    stack.start_rollout(&spec).await.context("start the rollout")?;
    println!("POST /v1/rollouts: rollout of {CANARY_VERSION} started\n");

    let columns = if std::io::stdout().is_terminal() { terminal_columns() } else { None };
    let mut dashboard = Dashboard::new(columns, started_unix_ms);
    // A compressed rollout ends in well under a minute; the cap keeps a
    // stuck one from running forever.
    let deadline = started + Duration::from_secs(args.step_seconds * 4 + 90);
    let (view, served_at_decision) = loop {
        let view = stack.rollout().await?;
        dashboard.show(&view, &spec);
        if let Some(phase) = phase_of(&view)
            && phase::is_terminal(phase)
        {
            let [stable, canary] = stack.served().await?;
            break (view, [stable.served, canary.served]);
        }
        if Instant::now() >= deadline {
            bail!("the rollout did not finish within {:?}", deadline - started);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    dashboard.finish();
    let phase = phase_of(&view).unwrap_or_default().to_owned();
    // Keep the traffic flowing a little, to show where it goes now.
    tokio::time::sleep(AFTER_DECISION).await;
    let [stable, canary] = stack.served().await?;
    Ok(RolloutOutcome {
        phase,
        started_unix_ms,
        decisions: decisions_of(&view),
        served_at_decision,
        served_at_end: [stable.served, canary.served],
    })
}

/// The live view: redrawn in place on a terminal, printed every few seconds
/// otherwise. Decisions are printed once each, above the dashboard.
struct Dashboard {
    /// The terminal's width when redrawing in place.
    redraw_columns: Option<usize>,
    started_unix_ms: u64,
    /// Terminal rows the last dashboard took (long lines wrap).
    rows_drawn: usize,
    decisions_printed: usize,
    last_printed: Option<Instant>,
    last_step: Option<(Value, Value)>,
}

impl Dashboard {
    fn new(redraw_columns: Option<usize>, started_unix_ms: u64) -> Self {
        Self {
            redraw_columns,
            started_unix_ms,
            rows_drawn: 0,
            decisions_printed: 0,
            last_printed: None,
            last_step: None,
        }
    }

    fn show(&mut self, view: &Value, spec: &Value) {
        let mut out = String::new();
        if self.redraw_columns.is_some() && self.rows_drawn > 0 {
            // Up to the first row of the last dashboard, and clear below.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.rows_drawn));
            self.rows_drawn = 0;
        }
        let decisions = decisions_of(view);
        // `decisions` holds the last 20; a demo rollout has fewer.
        for decision in decisions.iter().skip(self.decisions_printed) {
            out.push_str(&format_decision(decision, self.started_unix_ms));
            out.push('\n');
        }
        self.decisions_printed = self.decisions_printed.max(decisions.len());
        let rollout = rollout_of(view);
        let step = (rollout["step_index"].clone(), rollout["phase"].clone());
        let due = self.last_printed.is_none_or(|last| last.elapsed() >= PLAIN_PRINT_INTERVAL)
            || self.last_step.as_ref() != Some(&step);
        if self.redraw_columns.is_some() || due {
            for line in dashboard_lines(view, spec) {
                if let Some(columns) = self.redraw_columns {
                    self.rows_drawn += line.chars().count().div_ceil(columns.max(1)).max(1);
                }
                out.push_str(&line);
                out.push('\n');
            }
            if self.redraw_columns.is_none() {
                out.push('\n');
            }
            self.last_printed = Some(Instant::now());
            self.last_step = Some(step);
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// Leaves the last dashboard on screen.
    fn finish(&mut self) {
        self.rows_drawn = 0;
        println!();
    }
}

/// The terminal's width, from `COLUMNS` or `stty size`; `None` (print
/// instead of redrawing) when neither says.
fn terminal_columns() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|columns| columns.parse().ok()) {
        return Some(columns);
    }
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = std::process::Command::new("stty").arg("size").stdin(tty).output().ok()?;
    let size = String::from_utf8(output.stdout).ok()?;
    size.split_whitespace().nth(1)?.parse().ok().filter(|columns| *columns > 0)
}

/// The brief's deployment dashboard, from one `GET /v1/rollout`.
///
/// The per-version numbers are the engine's own for the current step (what
/// it judges), or the analyzer's since-the-weight-change counts before the
/// first assessment.
fn dashboard_lines(view: &Value, spec: &Value) -> Vec<String> {
    let rollout = rollout_of(view);
    let weight = rollout["weight_percent"].as_f64().unwrap_or(0.0);
    let step_index = rollout["step_index"].as_u64().unwrap_or(0);
    let step_count = rollout["step_count"].as_u64().unwrap_or(0);
    let step_elapsed = Duration::from_millis(rollout["step_elapsed_ms"].as_u64().unwrap_or(0));
    let phase = rollout["phase"].as_str().unwrap_or("?");
    let step = if rollout["step"].is_null() { "done".to_owned() } else { describe_step(&rollout["step"]) };
    let mut lines = vec![
        format!(
            "  {} {}   status: {}   step {}/{} ({step}), {:.0}s in step",
            rollout["name"].as_str().unwrap_or("rollout"),
            rollout["canary_version"].as_str().unwrap_or(CANARY_VERSION),
            phase_label(phase, weight),
            (step_index + 1).min(step_count.max(1)),
            step_count,
            step_elapsed.as_secs_f64().floor()
        ),
        format!(
            "  progress {} {weight:>3.0}%   {}",
            progress_bar(weight, 30),
            step_ladder(weight, phase, &next_step(spec, step_index, step_elapsed, phase))
        ),
    ];
    // Right after a weight change the latest assessment is still the last
    // step's; show the new step's own counts until the engine catches up.
    // Once the rollout has ended, the last assessment is the one it ended on.
    let evidence = &rollout["analysis"]["evidence"];
    let assessed_percent = evidence["canary_weight"].as_f64().map(|share| share * 100.0);
    let current =
        phase::is_terminal(phase) || assessed_percent.is_some_and(|assessed| (assessed - weight).abs() < 1e-6);
    let caption = match assessed_percent {
        Some(assessed) if current && (assessed - weight).abs() >= 1e-6 => {
            format!("the step at {assessed}% that decided")
        }
        _ => "this step".to_owned(),
    };
    lines.push(format!(
        "  {:<15} {:>8} {:>9} {:>10} {:>12}   ({caption})",
        "version", "traffic", "requests", "error rate", "p95"
    ));
    let gates = if current { &rollout["analysis"]["gates"] } else { &Value::Null };
    let arm = |version: &str| -> Value {
        if current && evidence[version].is_object() {
            let arm = &evidence[version];
            json!({ "requests": arm["requests"], "error_ratio": arm["error_rate"], "p95_ms": arm["p95_ms"] })
        } else {
            view["versions"][version]["since_weights_change"].clone()
        }
    };
    let (stable, canary) = (arm("stable"), arm("canary"));
    let all = (stable["requests"].as_u64().unwrap_or(0) + canary["requests"].as_u64().unwrap_or(0)).max(1) as f64;
    for (version, label, stats) in [("stable", STABLE_VERSION, &stable), ("canary", CANARY_VERSION, &canary)] {
        let requests = stats["requests"].as_u64().unwrap_or(0);
        let (error_mark, p95_mark) = if version == "canary" {
            (gate_mark(&gates["error_rate"]), gate_mark(&gates["p95"]))
        } else {
            ("  ", "  ")
        };
        lines.push(format!(
            "  {:<15} {:>7.1}% {:>9} {:>8} {error_mark} {:>9} {p95_mark}",
            format!("{version} {label}"),
            requests as f64 / all * 100.0,
            thousands(requests),
            percent(&stats["error_ratio"]),
            milliseconds(&stats["p95_ms"]),
        ));
    }
    lines.push(format!("  gates:    {}", describe_gates(gates)));
    lines.push(format!("  analysis: {}", describe_analysis(&rollout["analysis"])));
    lines
}

/// The dashboard's status line: "Canary (10% traffic)" and the like.
fn phase_label(phase: &str, weight: f64) -> String {
    match phase {
        phase::PROGRESSING => format!("Canary ({weight}% traffic)"),
        phase::PROMOTED => format!("PROMOTED ({weight}% traffic)"),
        phase::ROLLED_BACK => "ROLLED BACK (0% traffic)".to_owned(),
        other => format!("{other} ({weight}% traffic)"),
    }
}

fn progress_bar(percent: f64, width: usize) -> String {
    let filled = ((percent / 100.0 * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// "[10%] → 25% → 50% → 100%" with the current weight in brackets, and what
/// comes next.
fn step_ladder(weight: f64, phase: &str, next: &str) -> String {
    let ladder = STEP_WEIGHTS
        .iter()
        .map(|step| if f64::from(*step) == weight { format!("[{step}%]") } else { format!("{step}%") })
        .collect::<Vec<_>>()
        .join(" → ");
    if phase == phase::ROLLED_BACK { format!("{ladder}   (rolled back to 0%)") } else { format!("{ladder}{next}") }
}

/// "setWeight 25%", "pause 8s" or "pause until approved", from the API's
/// step view.
fn describe_step(step: &Value) -> String {
    match step["kind"].as_str() {
        Some("setWeight") => format!("setWeight {}%", step["weight_percent"].as_f64().unwrap_or(f64::NAN)),
        Some("pause") if step["until_approved"] == true => "pause until approved".to_owned(),
        Some("pause") => match step["duration_ms"].as_u64() {
            Some(duration_ms) => format!("pause {}s", duration_ms as f64 / 1000.0),
            None => "pause".to_owned(),
        },
        Some(other) => other.to_owned(),
        None => step.to_string(),
    }
}

/// "   next: 25% in 3.1s if the gates pass" while a timed pause runs.
fn next_step(spec: &Value, step_index: u64, step_elapsed: Duration, phase: &str) -> String {
    if phase != phase::PROGRESSING {
        return String::new();
    }
    let steps = spec["steps"].as_array().cloned().unwrap_or_default();
    let pause = steps.get(step_index as usize).and_then(|step| step["pause"]["duration"].as_str().map(str::to_owned));
    let next_weight = steps.iter().skip(step_index as usize).find_map(|step| step["setWeight"].as_f64());
    match (pause.and_then(|pause| parse_seconds(&pause)), next_weight) {
        (Some(pause), Some(next)) => {
            let left = pause.saturating_sub(step_elapsed);
            if left.is_zero() {
                format!("   next: {next}% once the gates pass")
            } else {
                format!("   next: {next}% in {:.0}s if the gates pass", left.as_secs_f64().ceil())
            }
        }
        _ => String::new(),
    }
}

fn parse_seconds(duration: &str) -> Option<Duration> {
    duration.strip_suffix('s').and_then(|seconds| seconds.parse().ok()).map(Duration::from_secs)
}

/// ✓ pass, ✗ fail, … not enough data yet, – not applicable.
fn gate_mark(gate: &Value) -> &'static str {
    match gate["status"].as_str() {
        Some("pass") => "✓",
        Some("fail") => "✗",
        Some("skipped") => "–",
        _ => "…",
    }
}

/// The engine's step gates: "✓ samples 412/150  ✓ errors 0.00% < 1%  …".
fn describe_gates(gates: &Value) -> String {
    if !gates.is_object() {
        return "waiting for the first assessment".to_owned();
    }
    let value = |gate: &str| gates[gate]["value"].as_f64();
    let limit = |gate: &str| gates[gate]["limit"].as_f64().unwrap_or(f64::NAN);
    let shown = |value: Option<f64>, format: &dyn Fn(f64) -> String| value.map_or_else(|| "-".to_owned(), format);
    [
        (
            "min_samples",
            format!("samples {}/{}", shown(value("min_samples"), &|v| format!("{v:.0}")), limit("min_samples")),
        ),
        (
            "error_rate",
            format!(
                "errors {} < {}%",
                shown(value("error_rate"), &|v| format!("{:.2}%", v * 100.0)),
                limit("error_rate") * 100.0
            ),
        ),
        ("p95", format!("p95 {} < {} ms", shown(value("p95"), &|v| format!("{v:.1}")), limit("p95"))),
        (
            "throughput",
            format!("throughput {} ≥ {}", shown(value("throughput"), &|v| format!("{v:.2}")), limit("throughput")),
        ),
        ("healthy_hosts", format!("hosts: {}", gates["healthy_hosts"]["detail"].as_str().unwrap_or("-"))),
    ]
    .into_iter()
    .map(|(gate, text)| format!("{} {text}", gate_mark(&gates[gate])))
    .collect::<Vec<_>>()
    .join("  ")
}

/// "healthy   errors e=0.41 (roll back at 200)   latency e=1.20 (at 400)"
fn describe_analysis(analysis: &Value) -> String {
    if analysis.is_null() {
        return "waiting for the first assessment".to_owned();
    }
    let verdict = &analysis["verdict"];
    let kind = verdict["kind"].as_str().unwrap_or("?").replace('_', " ");
    let verdict_text = match verdict["summary"].as_str().or(verdict["reason"].as_str()) {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind,
    };
    let evidence = &analysis["evidence"];
    let e_value = |test: &str, name: &str| {
        let test = &evidence[test];
        test["e_value"].as_f64().map(|e_value| {
            format!(
                "{name} e={} (roll back at {:.0})",
                e_value_text(e_value),
                test["threshold"].as_f64().unwrap_or(0.0)
            )
        })
    };
    let tests: Vec<String> =
        [e_value("error_test", "errors"), e_value("latency_test", "latency")].into_iter().flatten().collect();
    format!("{verdict_text}   {}", tests.join("   "))
}

fn e_value_text(e_value: f64) -> String {
    if e_value >= 1e4 { format!("{e_value:.2e}") } else { format!("{e_value:.2}") }
}

/// "  ▸ +12.3s  auto  Progressing → RolledBack  0%  rolled back: …"
fn format_decision(decision: &Value, started_unix_ms: u64) -> String {
    let at = decision["at_unix_ms"].as_u64().unwrap_or(started_unix_ms).saturating_sub(started_unix_ms);
    let from = decision["from_phase"].as_str().map(|from| format!("{from} → ")).unwrap_or_default();
    format!(
        "  ▸ {:>5.1}s  {:<5} {:<8} {from}{} at {}%: {}",
        at as f64 / 1000.0,
        decision["actor"].as_str().unwrap_or("?"),
        decision["action"].as_str().unwrap_or("?"),
        decision["to_phase"].as_str().unwrap_or("?"),
        decision["weight_percent"].as_f64().unwrap_or(f64::NAN),
        decision["reason"].as_str().unwrap_or(""),
    )
}

async fn print_summary(stack: &Stack, report: &LoadReport, outcome: &RolloutOutcome) -> anyhow::Result<()> {
    let [stable, canary] = stack.served().await?;
    let rollout = wait_for_counts(stack, stable.served, canary.served).await?;
    let headline = match outcome.phase.as_str() {
        phase::PROMOTED => format!("{CANARY_VERSION} PROMOTED to 100% automatically"),
        phase::ROLLED_BACK => format!("{CANARY_VERSION} ROLLED BACK automatically"),
        other => format!("{CANARY_VERSION} ended {other}"),
    };
    println!("summary: {headline}");
    println!("  decisions, time from the rollout's start:");
    for decision in &outcome.decisions {
        println!("  {}", format_decision(decision, outcome.started_unix_ms).trim_start());
    }
    if let Some(last) = outcome.decisions.last() {
        let at = last["at_unix_ms"].as_u64().unwrap_or(0).saturating_sub(outcome.started_unix_ms);
        println!("  time to decision: {:.1} s", at as f64 / 1000.0);
    }
    let after = [
        outcome.served_at_end[0] - outcome.served_at_decision[0],
        outcome.served_at_end[1] - outcome.served_at_decision[1],
    ];
    println!(
        "  in the {} s after the decision: {} of {} requests went to canary",
        AFTER_DECISION.as_secs(),
        thousands(after[1]),
        thousands(after[0] + after[1])
    );
    println!(
        "  client sent {} requests ({:.0} req/s), {} transport errors",
        thousands(report.sent),
        report.requests_per_second(),
        report.transport_errors
    );
    println!(
        "  backends served: stable {STABLE_VERSION} {} ({} errors), canary {CANARY_VERSION} {} ({} errors)",
        thousands(stable.served),
        stable.errors,
        thousands(canary.served),
        canary.errors
    );
    print_accounting(&rollout, [stable.served, canary.served]);
    Ok(())
}

/// The demo's closing check: the analyzer's per-version totals against what
/// the backends served, which must be equal.
fn print_accounting(rollout: &Value, served: [u64; 2]) {
    let total = |version: &str| rollout["versions"][version]["total"]["requests"].as_u64().unwrap_or(0);
    let counted = [total("stable"), total("canary")];
    println!(
        "  analyzer counted: stable {}, canary {}  -> {}",
        thousands(counted[0]),
        thousands(counted[1]),
        if counted == served { "every request accounted for exactly once" } else { "MISMATCH with the backends" }
    );
    println!("stopping Envoy, the analyzer and the backends");
}

/// The last reports reach the analyzer within a report interval or two;
/// returns the view once its totals match the backends (or after 5 s).
async fn wait_for_counts(stack: &Stack, stable: u64, canary: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rollout = stack.rollout().await?;
        let total = |version: &str| rollout["versions"][version]["total"]["requests"].as_u64().unwrap_or(0);
        if (total("stable") == stable && total("canary") == canary) || Instant::now() >= deadline {
            return Ok(rollout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percent(ratio: &Value) -> String {
    ratio.as_f64().map_or_else(|| "-".to_owned(), |ratio| format!("{:.2}%", ratio * 100.0))
}

fn milliseconds(value: &Value) -> String {
    value.as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// 12345 → "12,345".
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// The issue-2 demo: an operator walks the weight by hand, then rolls back.
mod manual {
    use super::*;

    /// How often the table gets a row.
    const ROW_INTERVAL: Duration = Duration::from_secs(2);

    pub async fn walk(stack: &Stack, args: &Args, started: Instant) -> anyhow::Result<()> {
        print_table_header();
        for &canary_percent in &args.steps_percent {
            let answer = stack.set_weight(canary_percent).await?;
            println!("{}", describe_change(&format!("canary -> {canary_percent}%"), &answer, started));
            let hold_until = Instant::now() + Duration::from_secs(args.hold_seconds);
            while Instant::now() < hold_until {
                tokio::time::sleep(ROW_INTERVAL.min(hold_until - Instant::now())).await;
                print_row(&stack.rollout().await?, started);
            }
        }

        let answer = stack.rollback().await?;
        println!("{}", describe_change("ROLLBACK", &answer, started));
        let canary_at_rollback = stack.backend_stats(Version::Canary).await?.served;
        let requests_at_rollback = stack.served().await?.iter().map(|stats| stats.served).sum::<u64>();
        tokio::time::sleep(ROW_INTERVAL).await;
        print_row(&stack.rollout().await?, started);
        let canary_after = stack.backend_stats(Version::Canary).await?.served - canary_at_rollback;
        let requests_after = stack.served().await?.iter().map(|stats| stats.served).sum::<u64>() - requests_at_rollback;
        println!(
            "  after the confirmed rollback: {canary_after} of {requests_after} requests reached canary (requests \
             already in flight at the rollback may finish there)"
        );
        Ok(())
    }

    fn print_table_header() {
        println!(
            "{:>6}  {:>7}  {:>8} {:>7} {:>18}  {:>8} {:>8} {:>7} {:>18}  data plane",
            "time", "weight", "stable", "err", "p50/p95/p99 ms", "canary", "share", "err", "p50/p95/p99 ms"
        );
    }

    /// One table row from `GET /v1/rollout`, using the counts since the last
    /// weight change so each step's numbers stand on their own.
    fn print_row(rollout: &Value, started: Instant) {
        let stats = |version: &str| &rollout["versions"][version]["since_weights_change"];
        let requests = |version: &str| stats(version)["requests"].as_u64().unwrap_or(0);
        let (stable, canary) = (requests("stable"), requests("canary"));
        let share = if stable + canary > 0 { canary as f64 / (stable + canary) as f64 * 100.0 } else { 0.0 };
        let plane = &rollout["data_plane"];
        println!(
            "{:>5.1}s  {:>6.2}%  {:>8} {:>7} {:>18}  {:>8} {:>7.2}% {:>7} {:>18}  {}/{} workers on v{}{}",
            started.elapsed().as_secs_f64(),
            rollout["canary_weight_percent"].as_f64().unwrap_or(f64::NAN),
            stable,
            percent(&stats("stable")["error_ratio"]),
            percentiles(stats("stable")),
            canary,
            share,
            percent(&stats("canary")["error_ratio"]),
            percentiles(stats("canary")),
            plane["converged_workers"].as_u64().unwrap_or(0),
            plane["live_workers"].as_u64().unwrap_or(0),
            rollout["weights_version"],
            if plane["converged"] == true { " (converged)" } else { " (converging)" },
        );
    }

    fn percentiles(stats: &Value) -> String {
        let value = |key: &str| stats[key].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        format!("{}/{}/{}", value("p50_ms"), value("p95_ms"), value("p99_ms"))
    }

    fn describe_change(what: &str, answer: &Value, started: Instant) -> String {
        let wait = &answer["wait"];
        format!(
            "{:>5.1}s  {what}: weights v{} applied by {}/{} workers, confirmed={} in {:.1} ms",
            started.elapsed().as_secs_f64(),
            answer["weights_version"],
            wait["workers_confirmed"],
            wait["workers_total"],
            wait["confirmed"],
            wait["propagation_ms"].as_f64().unwrap_or(f64::NAN),
        )
    }

    pub async fn print_summary(stack: &Stack, report: &LoadReport, started: Instant) -> anyhow::Result<()> {
        let [stable, canary] = stack.served().await?;
        let rollout = wait_for_counts(stack, stable.served, canary.served).await?;
        println!(
            "\nsummary after {:.1}s: client sent {} requests ({:.0} req/s), {} transport errors",
            started.elapsed().as_secs_f64(),
            report.sent,
            report.requests_per_second(),
            report.transport_errors
        );
        println!(
            "  backends served: stable {} ({} errors), canary {} ({} errors)",
            stable.served, stable.errors, canary.served, canary.errors
        );
        super::print_accounting(&rollout, [stable.served, canary.served]);
        Ok(())
    }
}
