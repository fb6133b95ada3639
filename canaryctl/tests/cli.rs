//! End-to-end tests of the `canaryctl` binary against the real analyzer,
//! served in-process on a loopback port with its state in a temporary
//! directory and a 100 ms rollout tick. No Envoy: rollouts here move by
//! commands and approval gates, which is what the CLI drives.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use canary_analyzer::config::{ReadAccess, TlsFiles};
use canary_analyzer::{AppState, Config, tls};
use serde_json::Value;
use tempfile::TempDir;

/// An analyzer on `127.0.0.1:<free port>`, stopped on drop.
struct Analyzer {
    /// `http://127.0.0.1:PORT`, or https.
    url: String,
    dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Analyzer {
    fn start() -> Analyzer {
        Analyzer::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut Config) + Send + 'static) -> Analyzer {
        Analyzer::open(tempfile::tempdir().expect("tempdir"), adjust)
    }

    /// HTTPS with a self-signed certificate for 127.0.0.1, written to
    /// `analyzer.crt` in the test's directory.
    fn https() -> Analyzer {
        let dir = tempfile::tempdir().expect("tempdir");
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
        let files = TlsFiles { cert_file: dir.path().join("analyzer.crt"), key_file: dir.path().join("analyzer.key") };
        std::fs::write(&files.cert_file, certified.cert.pem()).expect("write cert");
        std::fs::write(&files.key_file, certified.signing_key.serialize_pem()).expect("write key");
        Analyzer::open(dir, move |config| config.tls = Some(files))
    }

    fn open(dir: TempDir, adjust: impl FnOnce(&mut Config) + Send + 'static) -> Analyzer {
        let state_dir = dir.path().join("state");
        let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let mut config = Config::with_state_dir(state_dir);
                config.rollout_tick_ms = 100;
                adjust(&mut config);
                let tls_config = config.tls.as_ref().map(|files| tls::server_config(files).expect("TLS config"));
                let scheme = if tls_config.is_some() { "https" } else { "http" };
                let state = AppState::open(config).expect("analyzer state opens");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("local addr");
                addr_sender.send(format!("{scheme}://{addr}")).expect("send addr");
                // The same serve as the analyzer's main.
                let shutdown = async {
                    let _ = stopped.await;
                };
                tls::serve(listener, tls_config, state.clone(), shutdown).await.expect("serve");
                state.shutdown().await;
            });
        });
        let url = addr_receiver.recv_timeout(Duration::from_secs(10)).expect("analyzer started");
        Analyzer { url, dir, stop: Some(stop), thread: Some(thread) }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    /// Writes a file in the test's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    fn ctl(&self, args: &[&str]) -> Output {
        run(ctl_command(&self.url(), args))
    }

    /// `canaryctl -o json ARGS`, parsed.
    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let output = self.ctl(&full);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{error}: {}", describe(&output)))
    }

    fn phase(&self) -> String {
        self.ctl_json(&["status"])["rollout"]["phase"].as_str().unwrap_or("none").to_owned()
    }
}

impl Drop for Analyzer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The binary with a clean environment: the tests' own CANARY_* variables
/// must not leak in.
fn ctl_command(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_canaryctl"));
    for variable in [
        "CANARY_ADDR",
        "CANARY_SRE_TOKEN",
        "CANARY_SRE_TOKEN_FILE",
        "CANARY_READ_TOKEN",
        "CANARY_ACTOR",
        "CANARY_CA_FILE",
    ] {
        command.env_remove(variable);
    }
    command.arg("--addr").arg(addr).args(args).stdin(Stdio::null());
    command
}

/// Runs to completion, killing the child after 60 s so a hung CLI fails the
/// test instead of stalling the suite.
fn run(mut command: Command) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn canaryctl");
    finish(child, Duration::from_secs(60))
}

fn finish(mut child: Child, patience: Duration) -> Output {
    let deadline = Instant::now() + patience;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("canaryctl did not exit within {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn spawn(addr: &str, args: &[&str]) -> Child {
    ctl_command(addr, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn canaryctl")
}

/// Lines of a child's output as they come, read on a thread.
struct Lines {
    receiver: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Lines {
    fn of(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { receiver, seen: Default::default() }
    }

    /// The next line, which must contain `words`, within 15 s.
    fn expect(&self, words: &str) -> String {
        let line = self
            .receiver
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no line with {words:?}; before it: {:?}", self.seen.borrow()));
        self.seen.borrow_mut().push(line.clone());
        assert!(line.contains(words), "{line:?} lacks {words:?}; before it: {:?}", self.seen.borrow());
        line
    }

    /// Every line so far, after draining what is left.
    fn seen(&self) -> Vec<String> {
        while let Ok(line) = self.receiver.recv_timeout(Duration::from_millis(200)) {
            self.seen.borrow_mut().push(line);
        }
        self.seen.borrow().clone()
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
}

/// Two approval gates: nothing moves without a command.
const GATED_SPEC: &str = "\
name: cli-test
canaryVersion: v2
stableVersion: v1
steps:
  - setWeight: 10
  - pause: {untilApproved: true}
  - setWeight: 50
  - pause: {untilApproved: true}
  - setWeight: 100
";

fn start_gated(analyzer: &Analyzer) -> Output {
    let spec = analyzer.file("rollout.yaml", GATED_SPEC);
    let output = analyzer.ctl(&["--actor", "ci-pipeline", "start", "-f", path_str(&spec), "--reason", "release 42"]);
    assert_exit(&output, 0);
    output
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Polls `check` for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn a_rollout_from_start_to_promotion_through_every_command() {
    let analyzer = Analyzer::start();
    let started = start_gated(&analyzer);
    let text = stdout(&started);
    assert!(text.starts_with("started rollout cli-test (id "), "{text}");
    assert!(text.contains("rollout cli-test: AwaitingApproval, step 2 of 5 at 10%"), "{text}");

    let status = analyzer.ctl(&["status"]);
    assert_exit(&status, 0);
    let screen = stdout(&status);
    for line in [
        "phase     AwaitingApproval, for ",
        "step      2 of 5: pause until approved at 10%",
        "weight    [####....................................] 10% canary",
        "workers   0 of 0 live workers applied it (no filter has reported yet)",
        "VERSION       RPS   REQUESTS",
        "stable        0.0          0        0        -        -        -        -",
        "last decisions (1 of 1):",
    ] {
        assert!(screen.lines().any(|shown| shown.starts_with(line)), "missing {line:?} in\n{screen}");
    }
    assert!(screen.contains("ci-pipeline") && screen.contains("release 42"), "{screen}");

    let json = analyzer.ctl_json(&["status"]);
    assert_eq!(json["rollout"]["phase"], "AwaitingApproval");
    assert_eq!(json["canary_weight_percent"], 10.0);

    let paused = analyzer.ctl(&["--actor", "alice", "pause", "--reason", "looking at p95"]);
    assert_exit(&paused, 0);
    assert!(stdout(&paused).contains("rollout cli-test: Paused"), "{}", describe(&paused));
    let again = analyzer.ctl(&["pause"]);
    assert_exit(&again, 1);
    assert!(stderr(&again).contains("error: analyzer answered 409: pause: rollout cli-test is already paused"));
    assert!(stderr(&again).contains("hint: with canaryctl: `canaryctl resume`"), "{}", describe(&again));

    assert_exit(&analyzer.ctl(&["resume"]), 0);
    assert_eq!(analyzer.phase(), "AwaitingApproval");

    // A canary's steps own the weights: the refusal says what to use.
    let set = analyzer.ctl(&["set-weight", "25"]);
    assert_exit(&set, 1);
    assert!(stderr(&set).contains("its steps set the weights"), "{}", describe(&set));
    assert!(stderr(&set).contains("`canaryctl promote`"), "{}", describe(&set));

    let approved = analyzer.ctl(&["approve"]);
    assert_exit(&approved, 0);
    assert!(stdout(&approved).contains("AwaitingApproval, step 4 of 5 at 50%"), "{}", describe(&approved));

    // The assignment agrees with the weights now in force.
    let assignment = analyzer.ctl_json(&["assignment", "user 42"]);
    assert_eq!(assignment["key"], "user 42");
    assert_eq!(assignment["canary_weight_bp"], 5_000);
    let bucket = assignment["bucket"].as_u64().expect("bucket");
    assert_eq!(assignment["version"], if bucket < 5_000 { "canary" } else { "stable" });
    let text = stdout(&analyzer.ctl(&["assignment", "user 42"]));
    assert!(text.starts_with(&format!("key \"user 42\" → {}", assignment["version"].as_str().unwrap())), "{text}");

    let promoted = analyzer.ctl(&["promote", "--full", "--reason", "looks good"]);
    assert_exit(&promoted, 0);
    assert!(stdout(&promoted).contains("Promoted"), "{}", describe(&promoted));
    let waited = analyzer.ctl(&["wait", "--timeout", "5s"]);
    assert_exit(&waited, 0);

    let history = analyzer.ctl(&["history"]);
    assert_exit(&history, 0);
    let lines: Vec<String> = stdout(&history).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("cli-test") && lines[1].contains("Promoted") && lines[1].contains("100%"));
    assert!(lines[1].ends_with("promoted to 100% by api: looks good"), "{lines:?}");
    let entries = analyzer.ctl_json(&["history", "--limit", "1"]);
    assert_eq!(entries.as_array().map(Vec::len), Some(1));
    assert_eq!(entries[0]["outcome"], "Promoted");
}

#[test]
fn wait_exits_0_when_the_rollout_is_approved_while_waiting() {
    let analyzer = Analyzer::start();
    let spec = analyzer.file(
        "gate.yaml",
        "name: gate\ncanaryVersion: v3\nsteps: [{setWeight: 20}, {pause: {untilApproved: true}}, {setWeight: 100}]\n",
    );
    assert_exit(&analyzer.ctl(&["start", "-f", path_str(&spec)]), 0);
    // A pipeline's own approval step waits for the gate first.
    let at_gate = analyzer.ctl(&["wait", "--until", "approval", "--timeout", "10s", "--interval", "200ms"]);
    assert_exit(&at_gate, 0);
    assert!(stdout(&at_gate).starts_with("rollout gate: AwaitingApproval"), "{}", describe(&at_gate));
    let mut waiting = spawn(&analyzer.url(), &["wait", "--timeout", "30s", "--interval", "200ms"]);
    let progress = Lines::of(waiting.stderr.take().expect("stderr"));
    // The progress line while it waits, then the approval ends the wait.
    progress.expect("] rollout gate: AwaitingApproval, step 2 of 3 at 20%");
    assert_exit(&analyzer.ctl(&["approve", "--reason", "manual gate passed"]), 0);
    let output = finish(waiting, Duration::from_secs(30));
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("rollout gate: Promoted at 100%"), "{}", describe(&output));
}

#[test]
fn wait_exits_1_after_a_gradual_rollback() {
    let analyzer = Analyzer::start();
    start_gated(&analyzer);
    let waiting = spawn(&analyzer.url(), &["-o", "json", "wait", "--timeout", "30s", "--interval", "200ms"]);
    let rollback = analyzer.ctl(&["rollback", "--gradual", "3", "--reason", "p95 up"]);
    assert_exit(&rollback, 0);
    let text = stdout(&rollback);
    assert!(text.contains("rolling back gradually from 10% to 0% over 3s"), "{text}");
    let output = finish(waiting, Duration::from_secs(30));
    assert_exit(&output, 1);
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON outcome");
    assert_eq!(result["exit_code"], 1);
    assert_eq!(result["rollout"]["phase"], "RolledBack");
    assert_eq!(result["rollout"]["weight_percent"], 0.0);
    assert!(result["message"].as_str().unwrap_or_default().contains("reached 0%"), "{result}");
    // An ended rollout refuses further commands and says how to go on.
    let promote = analyzer.ctl(&["promote"]);
    assert_exit(&promote, 1);
    assert!(stderr(&promote).contains("`canaryctl start -f FILE`"), "{}", describe(&promote));
}

#[test]
fn wait_exits_2_when_the_timeout_passes_first() {
    let analyzer = Analyzer::start();
    start_gated(&analyzer);
    let begun = Instant::now();
    let output = analyzer.ctl(&["wait", "--timeout", "1s", "--interval", "200ms"]);
    assert_exit(&output, 2);
    assert!(begun.elapsed() < Duration::from_secs(10), "{:?}", begun.elapsed());
    assert!(stdout(&output).starts_with("timed out after 1s, still in progress: rollout cli-test: AwaitingApproval"));
    let json = analyzer.ctl(&["-o", "json", "wait", "--timeout", "500ms"]);
    assert_exit(&json, 2);
    let result: Value = serde_json::from_slice(&json.stdout).expect("JSON outcome");
    assert_eq!(result["exit_code"], 2);
    assert_eq!(result["rollout"]["phase"], "AwaitingApproval");
    // Another rollout's id is not this one's outcome.
    let other = analyzer.ctl(&["wait", "--id", "r-other", "--timeout", "5s"]);
    assert_exit(&other, 3);
    assert!(stdout(&other).contains("not r-other"), "{}", describe(&other));
}

#[test]
fn an_unreachable_analyzer_is_exit_3_with_what_to_check() {
    let addr = format!("http://127.0.0.1:{}", closed_port());
    let status = run(ctl_command(&addr, &["status"]));
    assert_exit(&status, 3);
    let text = stderr(&status);
    assert!(text.starts_with(&format!("error: cannot reach the analyzer at {addr}: ")), "{text}");
    assert!(text.contains(&format!("hint: is the analyzer running at {addr}? Set --addr or CANARY_ADDR")), "{text}");

    let begun = Instant::now();
    let waited = run(ctl_command(&addr, &["wait", "--timeout", "1s", "--interval", "200ms"]));
    assert_exit(&waited, 3);
    assert!(begun.elapsed() >= Duration::from_secs(1), "gave up before the timeout");
    assert!(stdout(&waited).starts_with("gave up after 1s, outcome unknown: cannot reach the analyzer"));
    assert!(stderr(&waited).contains("retrying until 1s have passed"), "{}", describe(&waited));

    // CANARY_ADDR is read when --addr is absent.
    let mut bare = Command::new(env!("CARGO_BIN_EXE_canaryctl"));
    bare.arg("status").env("CANARY_ADDR", &addr);
    let from_env = run(bare);
    assert_exit(&from_env, 3);
    assert!(stderr(&from_env).contains(&addr), "{}", describe(&from_env));
}

#[test]
fn tokens_missing_or_of_the_wrong_role_say_what_to_set() {
    let analyzer = Analyzer::with(|config| {
        config.sre_token = Some("sre-secret".into());
        config.read_token = Some("read-secret".into());
        config.read_access = ReadAccess::Token;
    });
    let spec = analyzer.file("rollout.yaml", GATED_SPEC);
    let start = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["start", "-f", path_str(&spec)]);
        analyzer.ctl(&args)
    };

    let missing = start(&[]);
    assert_exit(&missing, 1);
    assert!(stderr(&missing).contains("error: analyzer answered 401: missing bearer token"), "{}", describe(&missing));
    assert!(stderr(&missing).contains("hint: set CANARY_SRE_TOKEN, --token or --token-file"), "{}", describe(&missing));
    let wrong_role = start(&["--token", "read-secret"]);
    assert_exit(&wrong_role, 1);
    assert!(stderr(&wrong_role).contains("403"), "{}", describe(&wrong_role));
    assert!(stderr(&wrong_role).contains("not the read token"), "{}", describe(&wrong_role));

    let token_file = analyzer.file("sre-token", "sre-secret\n");
    assert_exit(&start(&["--token-file", path_str(&token_file)]), 0);

    let read = analyzer.ctl(&["status"]);
    assert_exit(&read, 1);
    assert!(stderr(&read).contains("hint: set CANARY_READ_TOKEN or --read-token"), "{}", describe(&read));
    let mut with_env = ctl_command(&analyzer.url(), &["status"]);
    with_env.env("CANARY_READ_TOKEN", "read-secret");
    let read = run(with_env);
    assert_exit(&read, 0);
    assert!(stdout(&read).contains("AwaitingApproval"), "{}", describe(&read));
    // The SRE token reads too.
    assert_exit(&analyzer.ctl(&["--token", "sre-secret", "history"]), 0);

    // `wait` cannot fix a missing token by polling: it stops at once.
    let begun = Instant::now();
    let waited = analyzer.ctl(&["wait", "--timeout", "30s"]);
    assert_exit(&waited, 3);
    assert!(begun.elapsed() < Duration::from_secs(10));
    assert!(stdout(&waited).contains("CANARY_READ_TOKEN"), "{}", describe(&waited));
}

#[test]
fn manual_weights_are_validated_locally_and_confirmed_with_wait() {
    let analyzer = Analyzer::start();
    let spec = analyzer.file("manual.json", r#"{"name": "by-hand", "canaryVersion": "v9", "strategy": "manual"}"#);
    assert_exit(&analyzer.ctl(&["start", "-f", path_str(&spec)]), 0);

    let bad = analyzer.ctl(&["set-weight", "12.345"]);
    assert_exit(&bad, 64);
    assert!(stderr(&bad).contains("\"12.345\" has more than two decimals"), "{}", describe(&bad));
    let bad = analyzer.ctl(&["rollback", "--gradual", "7200"]);
    assert_exit(&bad, 64);
    assert!(stderr(&bad).contains("7200"), "{}", describe(&bad));

    let set = analyzer.ctl(&["set-weight", "0.5", "--wait", "--wait-timeout", "2s", "--reason", "first slice"]);
    assert_exit(&set, 0);
    let text = stdout(&set);
    assert!(text.starts_with("canary weight 0.5% (weights version "), "{text}");
    assert!(text.contains("applied by all 0 live workers"), "{text}");
    assert_eq!(analyzer.ctl_json(&["status"])["canary_weight_percent"], 0.5);
    assert_eq!(analyzer.ctl_json(&["status"])["rollout"]["strategy"], "manual");

    let rollback = analyzer.ctl_json(&["rollback", "--wait"]);
    assert_eq!(rollback["canary_weight_percent"], 0.0);
    assert_eq!(rollback["wait"]["confirmed"], true);
    assert_eq!(rollback["rollout"]["phase"], "RolledBack");
    eventually("the history entry", || analyzer.ctl_json(&["history"])[0]["outcome"] == "RolledBack");
}

#[test]
fn a_bad_spec_names_the_field_and_a_missing_file_is_a_usage_error() {
    let analyzer = Analyzer::start();
    let spec = analyzer.file("bad.yaml", "canaryVersion: v2\nsteps:\n  - setWeight: 150\n");
    let output = analyzer.ctl(&["start", "-f", path_str(&spec)]);
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("analyzer answered 422: steps[0].setWeight"), "{}", describe(&output));
    assert!(stderr(&output).contains("hint: fix `steps[0].setWeight` and try again"), "{}", describe(&output));
    assert_eq!(analyzer.phase(), "none");

    let missing = analyzer.ctl(&["start", "-f", "/nonexistent/rollout.yaml"]);
    assert_exit(&missing, 64);
    assert!(stderr(&missing).contains("-f /nonexistent/rollout.yaml: cannot read the rollout spec"));

    // Standard input works too, for generated specs.
    let mut piped = ctl_command(&analyzer.url(), &["start", "-f", "-"]);
    piped.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = piped.spawn().expect("spawn");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(GATED_SPEC.as_bytes()).expect("write spec");
    }
    assert_exit(&finish(child, Duration::from_secs(30)), 0);
    assert_eq!(analyzer.phase(), "AwaitingApproval");
}

#[test]
fn watch_without_a_terminal_prints_a_line_per_change_and_ends_with_the_rollout() {
    let analyzer = Analyzer::start();
    start_gated(&analyzer);
    let mut watching = spawn(&analyzer.url(), &["status", "--watch", "--interval", "200ms"]);
    let shown = Lines::of(watching.stdout.take().expect("stdout"));
    let first = shown.expect("rollout cli-test: AwaitingApproval");
    // Several polls with nothing new print nothing.
    std::thread::sleep(Duration::from_millis(700));
    assert_exit(&analyzer.ctl(&["pause"]), 0);
    let second = shown.expect("rollout cli-test: Paused");
    assert_exit(&analyzer.ctl(&["promote", "--full"]), 0);
    let third = shown.expect("rollout cli-test: Promoted");
    let output = finish(watching, Duration::from_secs(30));
    assert_exit(&output, 0);
    // One line per change, no screen-clearing codes in a pipe.
    assert_eq!(shown.seen(), [first, second, third]);
    assert!(shown.seen().iter().all(|line| !line.contains('\x1b')));
}

#[test]
fn help_completions_and_usage_errors() {
    let help = run(ctl_command("http://127.0.0.1:1", &["--help"]));
    assert_exit(&help, 0);
    for words in ["Exit codes:", "2  `wait`: the rollout was still in progress", "CANARY_SRE_TOKEN", "set-weight"] {
        assert!(stdout(&help).contains(words), "{words:?} not in\n{}", stdout(&help));
    }
    for shell in ["bash", "zsh", "fish"] {
        let completions = run(ctl_command("http://127.0.0.1:1", &["completions", shell]));
        assert_exit(&completions, 0);
        let script = stdout(&completions);
        assert!(script.contains("canaryctl") && script.contains("set-weight"), "{shell}");
    }
    let unknown = run(ctl_command("http://127.0.0.1:1", &["status", "--frobnicate"]));
    assert_exit(&unknown, 64);
    let bad_addr = run(ctl_command("ftp://127.0.0.1:1", &["status"]));
    assert_exit(&bad_addr, 64);
    assert!(stderr(&bad_addr).contains("the scheme must be http:// or https://"), "{}", describe(&bad_addr));
}

#[test]
fn https_with_the_analyzer_ca_and_clear_errors_without_it() {
    let analyzer = Analyzer::https();
    assert!(analyzer.url().starts_with("https://"));
    let ca_file = analyzer.dir.path().join("analyzer.crt");
    let trusted = analyzer.ctl(&["--ca-file", path_str(&ca_file), "status"]);
    assert_exit(&trusted, 0);
    assert!(stdout(&trusted).starts_with("rollout   none started"), "{}", describe(&trusted));

    // The public roots do not include a self-signed certificate.
    let untrusted = analyzer.ctl(&["status"]);
    assert_exit(&untrusted, 3);
    assert!(
        stderr(&untrusted).contains("hint: the analyzer's certificate is not trusted here"),
        "{}",
        describe(&untrusted)
    );

    let plain = run(ctl_command(&analyzer.url().replace("https://", "http://"), &["status"]));
    assert_exit(&plain, 3);
    assert!(stderr(&plain).contains("use an https:// address"), "{}", describe(&plain));

    let not_pem = analyzer.file("not-a-cert.pem", "hello\n");
    let bad = analyzer.ctl(&["--ca-file", path_str(&not_pem), "status"]);
    assert_exit(&bad, 64);
    assert!(stderr(&bad).contains("holds no PEM certificate"), "{}", describe(&bad));
}

// -- docs/pipeline ------------------------------------------------------------

fn pipeline_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/pipeline")
}

/// Runs a docs/pipeline script with canaryctl on the PATH, pointed at `analyzer`.
fn pipeline_script(analyzer: &Analyzer, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_canaryctl")).parent().expect("bin dir").to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("bash");
    command.arg(pipeline_dir().join(script)).args(args).env("PATH", path).stdin(Stdio::null());
    for variable in
        ["CANARY_SRE_TOKEN", "CANARY_SRE_TOKEN_FILE", "CANARY_READ_TOKEN", "CANARY_ACTOR", "CANARY_APPROVAL"]
    {
        command.env_remove(variable);
    }
    command.env("CANARY_ADDR", analyzer.url()).envs(env.iter().copied());
    run(command)
}

#[test]
fn the_pipeline_stage_promotes_on_approval_stops_at_the_gate_and_rolls_back_on_no() {
    let analyzer = Analyzer::start();
    // The docs' shape, with steps that need no traffic.
    let spec = analyzer.file(
        "stage.yaml",
        "name: stage\ncanaryVersion: ${VERSION}\nsteps: [{setWeight: 10}, {pause: {untilApproved: true}}, {setWeight: 100}]\n",
    );
    let spec_env = ("ROLLOUT_SPEC", path_str(&spec));

    let approved = pipeline_script(&analyzer, "canary-stage.sh", &["v7.1.0"], &[spec_env, ("CANARY_APPROVAL", "yes")]);
    assert_exit(&approved, 0);
    assert!(stdout(&approved).contains("rollout stage: Promoted at 100%"), "{}", describe(&approved));
    let history = analyzer.ctl_json(&["history"]);
    assert_eq!(history[0]["canary_version"], "v7.1.0");
    assert_eq!(history[0]["outcome"], "Promoted");
    let actors: Vec<&str> =
        history[0]["decisions"].as_array().unwrap().iter().filter_map(|d| d["actor"].as_str()).collect();
    assert_eq!(actors, ["pipeline", "pipeline"], "start and approve by the stage");

    // No approval and no terminal: the stage stops at the gate, exit 2.
    let undecided = pipeline_script(&analyzer, "canary-stage.sh", &["v7.2.0"], &[spec_env]);
    assert_exit(&undecided, 2);
    assert!(stderr(&undecided).contains("waits at the approval gate"), "{}", describe(&undecided));
    assert_eq!(analyzer.phase(), "AwaitingApproval");
    assert_exit(&analyzer.ctl(&["rollback"]), 0);

    let refused = pipeline_script(&analyzer, "canary-stage.sh", &["v7.3.0"], &[spec_env, ("CANARY_APPROVAL", "no")]);
    assert_exit(&refused, 1);
    let history = analyzer.ctl_json(&["history"]);
    assert_eq!(history[0]["canary_version"], "v7.3.0");
    assert_eq!(history[0]["outcome"], "RolledBack");
    let last = history[0]["decisions"].as_array().and_then(|d| d.last()).cloned().unwrap_or_default();
    assert_eq!(last["reason"], "rolled back by pipeline: release v7.3.0 not approved");
}

#[test]
fn rollback_script_sends_everything_to_stable_and_watches() {
    let analyzer = Analyzer::start();
    start_gated(&analyzer);
    let env = [("MONITOR_ROUNDS", "1"), ("MONITOR_INTERVAL_SECONDS", "0"), ("CANARY_ACTOR", "oncall")];
    let output = pipeline_script(&analyzer, "rollback.sh", &["payment-service", "production", "p95 doubled"], &env);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("canary weight 0% (weights version"), "{text}");
    assert!(text.contains("applied by all 0 live workers"), "{text}");
    assert!(text.contains("weight    [........................................] 0% canary"), "{text}");
    assert!(text.lines().any(|line| line.starts_with("canary ")), "{text}");
    let rollout = analyzer.ctl_json(&["status"])["rollout"].clone();
    assert_eq!(rollout["phase"], "RolledBack");
    let reason = rollout["decisions"].as_array().and_then(|d| d.last()).map(|d| d["reason"].clone());
    assert_eq!(reason, Some(Value::from("rolled back by oncall: p95 doubled (payment-service/production)")));

    let usage = pipeline_script(&analyzer, "rollback.sh", &["payment-service"], &[]);
    assert_ne!(usage.status.code(), Some(0));
    assert!(stderr(&usage).contains("usage: rollback.sh SERVICE ENVIRONMENT [REASON]"), "{}", describe(&usage));
}

#[test]
fn the_pipeline_spec_and_workflow_are_valid() {
    use canary_analyzer::rollout::{PauseWait, RolloutSpec, Step};
    let text = std::fs::read_to_string(pipeline_dir().join("rollout.yaml")).expect("rollout.yaml");
    let spec = RolloutSpec::parse_file_text("rollout.yaml", &text.replace("${VERSION}", "v1.5.0")).expect("valid spec");
    assert_eq!(spec.canary_version, "v1.5.0");
    let gate = spec.steps.len() - 2;
    assert!(matches!(spec.steps[gate], Step::Pause { wait: PauseWait::UntilApproved, .. }), "{:?}", spec.steps);
    assert!(matches!(spec.steps[gate + 1], Step::SetWeight { weight_bp: 10_000 }), "{:?}", spec.steps);

    let workflow: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(pipeline_dir().join("github-actions.yaml")).expect("read"))
            .expect("the workflow is YAML");
    let runs = |job: &str| -> String {
        let steps = workflow["jobs"][job]["steps"].as_sequence().cloned().unwrap_or_default();
        steps.iter().filter_map(|step| step["run"].as_str().map(str::to_owned)).collect::<Vec<_>>().join("\n")
    };
    assert!(runs("analysis").contains("canaryctl start -f -"));
    assert!(runs("analysis").contains("canaryctl wait --until approval"));
    assert_eq!(workflow["jobs"]["promote"]["environment"].as_str(), Some("production-100"));
    assert!(runs("promote").contains("canaryctl approve") && runs("promote").contains("canaryctl wait"));
    assert!(runs("rollback").contains("canaryctl rollback --wait"));
}
