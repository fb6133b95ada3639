//! Crash safety of the state directory, with the real analyzer binary
//! (issue 5, part 6).
//!
//! 1. `kill -9` at random points while reports and weight changes are being
//!    written, many times over one state directory. After each restart the
//!    state is the old one or the new one: every acknowledged report and
//!    weight change is there, nothing unacknowledged is there twice, and a
//!    re-send of the unacknowledged reports (what the filter does) brings
//!    the counts to exactly what was sent.
//! 2. A corrupt or half-written state file, weights file or journal stops
//!    startup with a message naming the file, and the file is left as it was
//!    (never replaced by defaults that could send canary traffic).
//!
//! The HTTP client is a few lines over `std::net`: each call is one
//! `Connection: close` exchange with a blocking socket, which is all these
//! tests need, and it keeps them free of an async runtime and its timers
//! while processes are being killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use canary_protocol::report::{ReportHeader, StatusClass, VersionStats};
use canary_protocol::{Report, SplitRng, SyncResponse};
use serde_json::Value;

const ANALYZER: &str = env!("CARGO_BIN_EXE_canary-analyzer");
const START_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running analyzer and everything it wrote to stderr.
struct Analyzer {
    child: Child,
    address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Analyzer {
    fn start(state_dir: &Path) -> Analyzer {
        match Self::try_start(state_dir) {
            Ok(analyzer) => analyzer,
            Err((status, log)) => panic!("the analyzer did not start ({status}):\n{log}"),
        }
    }

    /// Starts the analyzer; on failure, how it ended and its log.
    fn try_start(state_dir: &Path) -> Result<Analyzer, (String, String)> {
        let mut child = Command::new(ANALYZER)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("CANARY_FILTER_TOKEN")
            .env_remove("CANARY_SRE_TOKEN")
            .env_remove("CANARY_READ_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the analyzer");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("canary-analyzer listening on ") {
                    let _ = address_tx.send(address.trim().parse::<SocketAddr>());
                }
                let mut log = log_writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Ok(address)) = address_rx.recv_timeout(Duration::from_millis(20)) {
                return Ok(Analyzer { child, address, log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(100));
                let log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                return Err((status.to_string(), log));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                return Err(("no listening line in time".to_owned(), log));
            }
        }
    }

    /// SIGKILL: no flush, no shutdown hook.
    fn kill_9(mut self) {
        self.child.kill().expect("kill -9 the analyzer");
        self.child.wait().expect("reap the analyzer");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn rollout(&self) -> Value {
        let (status, body) = http(self.address, "GET", "/v1/rollout", None).expect("GET /v1/rollout");
        assert_eq!(status, 200, "GET /v1/rollout: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("JSON rollout view")
    }
}

impl Drop for Analyzer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange: the status and the body.
fn http(address: SocketAddr, method: &str, path: &str, body: Option<(&str, &[u8])>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let (content_type, bytes) = body.unwrap_or(("application/json", b""));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: canary-analyzer\r\nconnection: close\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(bytes)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete response head"))?;
    let status = std::str::from_utf8(&response[..split])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status code"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// Reproducible "random" kill points and counts from a seed, drawn from the
/// protocol's SplitMix64.
trait Below {
    fn below(&mut self, bound: u64) -> u64;
}

impl Below for SplitRng {
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// A simulated filter worker: what it sent, what was acknowledged, and the
/// report in flight when the analyzer died.
struct SimWorker {
    proxy_id: String,
    worker_id: u64,
    next_seq: u64,
    /// Requests per version (stable, canary) in acknowledged reports.
    acked: [u64; 2],
    /// A report sent but not acknowledged: its body and its requests.
    pending: Option<(Vec<u8>, [u64; 2])>,
    rng: SplitRng,
}

impl SimWorker {
    fn new(index: u64) -> SimWorker {
        SimWorker {
            proxy_id: format!("crash-test-proxy-{index}"),
            worker_id: 1_000 + index,
            next_seq: 1,
            acked: [0; 2],
            pending: None,
            rng: SplitRng::new(index.wrapping_mul(7_919)),
        }
    }

    fn next_report(&mut self) -> (Vec<u8>, [u64; 2]) {
        let mut versions = [VersionStats::default(), VersionStats::default()];
        let mut requests = [0u64; 2];
        for (index, stats) in versions.iter_mut().enumerate() {
            let count = 1 + self.rng.below(20);
            for _ in 0..count {
                let class =
                    if self.rng.below(10) == 0 { StatusClass::from_status(503) } else { StatusClass::from_status(200) };
                stats.record(class, 500 + self.rng.below(50_000));
            }
            requests[index] = count;
        }
        let report = Report {
            header: ReportHeader {
                proxy_id: self.proxy_id.clone(),
                worker_id: self.worker_id,
                seq: self.next_seq,
                weights_version: 0,
                counts_weights_version: 0,
                // Answer as soon as the report is durable.
                max_hold_ms: 0,
            },
            versions: [versions[0].to_delta(), versions[1].to_delta()],
        };
        self.next_seq += 1;
        let mut bytes = Vec::new();
        report.encode(&mut bytes);
        (bytes, requests)
    }

    /// Sends the pending report (or a new one); true when acknowledged.
    fn send_once(&mut self, address: SocketAddr) -> bool {
        let (bytes, requests) = match self.pending.take() {
            Some(pending) => pending,
            None => self.next_report(),
        };
        let answer = http(address, "POST", "/v1/filter/sync", Some(("application/octet-stream", &bytes)));
        match answer {
            Ok((200, body)) => {
                let response = SyncResponse::decode(&body).expect("a sync response");
                let sent = Report::decode(&bytes).expect("own report");
                assert_eq!(response.acked_seq, sent.header.seq, "the answer acknowledges the report sent");
                self.acked[0] += requests[0];
                self.acked[1] += requests[1];
                true
            }
            // Refused, reset or cut: the analyzer died; keep it for the re-send.
            _ => {
                self.pending = Some((bytes, requests));
                false
            }
        }
    }
}

/// Weight changes: the last acknowledged one, and those in flight when the
/// analyzer died (their outcome is unknown).
#[derive(Default)]
struct WeightLog {
    acked: Option<(u64, f64)>,
    in_flight: Vec<f64>,
    changes: usize,
}

fn weights_of(view: &Value) -> (u64, f64) {
    let version = view["weights_version"].as_u64().expect("weights_version");
    let percent = view["canary_weight_percent"].as_f64().expect("canary_weight_percent");
    (version, percent)
}

fn total_requests(view: &Value) -> [u64; 2] {
    ["stable", "canary"].map(|version| view["versions"][version]["total"]["requests"].as_u64().unwrap_or(0))
}

/// Requests per version in every acknowledged report of `workers`.
fn acked_requests(workers: &[SimWorker]) -> [u64; 2] {
    [0, 1].map(|index| workers.iter().map(|worker| worker.acked[index]).sum())
}

#[test]
fn kill_9_during_writes_keeps_the_old_or_the_new_state_and_resends_make_counts_exact() {
    const ITERATIONS: usize = 25;
    const WORKERS: u64 = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().join("state");
    let mut rng = SplitRng::new(0x5EED);
    let mut workers: Vec<SimWorker> = (0..WORKERS).map(SimWorker::new).collect();
    let mut weights = WeightLog::default();
    let mut kills_mid_traffic = 0;
    // How the kills landed, to show the test reached both outcomes.
    let (mut reports_in_flight, mut in_flight_applied, mut weights_in_flight, mut weight_changes) = (0, 0, 0, 0);

    for iteration in 0..ITERATIONS {
        let analyzer = Analyzer::start(&state_dir);
        let address = analyzer.address;
        let view = analyzer.rollout();

        // What the restart found must be the old state or the new one.
        let (version, percent) = weights_of(&view);
        match weights.acked {
            Some((acked_version, acked_percent)) if version == acked_version => {
                assert!(
                    (percent - acked_percent).abs() < 1e-9,
                    "iteration {iteration}: version {version} changed weight"
                )
            }
            Some((acked_version, _)) => {
                assert!(version > acked_version, "iteration {iteration}: weights went back to {version}");
                assert!(
                    weights.in_flight.iter().any(|wanted| (wanted - percent).abs() < 1e-9),
                    "iteration {iteration}: weight {percent}% at version {version} was never requested in flight \
                     ({:?})",
                    weights.in_flight
                );
            }
            None => {}
        }
        weights.acked = Some((version, percent));
        weights.in_flight.clear();
        let totals = total_requests(&view);
        let acked_total: u64 = workers.iter().map(|worker| worker.acked.iter().sum::<u64>()).sum();
        if workers.iter().any(|worker| worker.pending.is_some()) {
            reports_in_flight += 1;
            if totals.iter().sum::<u64>() > acked_total {
                in_flight_applied += 1;
            }
        }
        for index in 0..2 {
            let acked: u64 = workers.iter().map(|worker| worker.acked[index]).sum();
            let pending: u64 = workers.iter().filter_map(|worker| worker.pending.as_ref()).map(|(_, r)| r[index]).sum();
            assert!(
                (acked..=acked + pending).contains(&totals[index]),
                "iteration {iteration}, version {index}: total {} outside acknowledged {acked} + in flight {pending}\n{}",
                totals[index],
                analyzer.log()
            );
        }

        // The filter's behaviour after a failed sync: re-send the same report
        // until acknowledged. Duplicates must not count twice.
        for worker in &mut workers {
            let deadline = Instant::now() + IO_TIMEOUT;
            while worker.pending.is_some() {
                assert!(Instant::now() < deadline, "a re-send was never acknowledged\n{}", analyzer.log());
                worker.send_once(address);
            }
        }
        assert_eq!(
            total_requests(&analyzer.rollout()),
            acked_requests(&workers),
            "iteration {iteration}: after re-sends, counts equal what was sent"
        );

        // Traffic, weight changes, and a kill -9 at a random point in them.
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = workers
            .drain(..)
            .map(|mut worker| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !worker.send_once(address) {
                            break;
                        }
                    }
                    worker
                })
            })
            .collect();
        let weight_stop = Arc::clone(&stop);
        let mut weight_rng = SplitRng::new(rng.next_u64());
        let weight_changer = thread::spawn(move || {
            let mut log = WeightLog::default();
            while !weight_stop.load(Ordering::Relaxed) {
                // Distinct weights, so each version's weight is recognisable.
                let percent = (1 + weight_rng.below(9_999)) as f64 / 100.0;
                let body = format!("{{\"canary_percent\": {percent}}}");
                match http(address, "PUT", "/v1/rollout/weight", Some(("application/json", body.as_bytes()))) {
                    Ok((200, answer)) => {
                        let answer: Value = serde_json::from_slice(&answer).expect("JSON answer");
                        log.acked = Some(weights_of(&answer));
                        log.changes += 1;
                    }
                    _ => {
                        log.in_flight.push(percent);
                        break;
                    }
                }
                thread::sleep(Duration::from_millis(weight_rng.below(15)));
            }
            log
        });
        thread::sleep(Duration::from_millis(30 + rng.below(250)));
        let before_kill = total_requests(&analyzer.rollout());
        if before_kill.iter().sum::<u64>() > 0 {
            kills_mid_traffic += 1;
        }
        analyzer.kill_9();
        stop.store(true, Ordering::Relaxed);
        workers = senders.into_iter().map(|sender| sender.join().expect("sender thread")).collect();
        let log = weight_changer.join().expect("weight thread");
        if log.acked.is_some() {
            weights.acked = log.acked;
        }
        weight_changes += log.changes;
        weights_in_flight += usize::from(!log.in_flight.is_empty());
        weights.in_flight = log.in_flight;
    }
    assert_eq!(kills_mid_traffic, ITERATIONS, "every kill landed while traffic was being written");
    eprintln!(
        "{ITERATIONS} kills: {reports_in_flight} with a report in flight ({in_flight_applied} of them already \
         durable), {weights_in_flight} with a weight change in flight; {weight_changes} weight changes acknowledged"
    );
    assert!(reports_in_flight > 0 && weights_in_flight > 0, "kills landed mid-write");

    // A last restart: the final state passes the same checks, and a clean
    // start finds nothing corrupt.
    let analyzer = Analyzer::start(&state_dir);
    for worker in &mut workers {
        while worker.pending.is_some() {
            worker.send_once(analyzer.address);
        }
    }
    assert_eq!(
        total_requests(&analyzer.rollout()),
        acked_requests(&workers),
        "after {ITERATIONS} kills, every report counted exactly once"
    );
    assert!(!analyzer.log().contains("ERROR"), "no error at startup:\n{}", analyzer.log());
}

/// Starts a fresh analyzer on `state_dir` to create its files, and kills it
/// after recording reports and a weight change.
fn populated_state_dir(state_dir: &Path) {
    let analyzer = Analyzer::start(state_dir);
    let mut worker = SimWorker::new(1);
    for _ in 0..5 {
        assert!(worker.send_once(analyzer.address));
    }
    let body = br#"{"canary_percent": 10}"#;
    let (status, answer) =
        http(analyzer.address, "PUT", "/v1/rollout/weight", Some(("application/json", body))).expect("PUT weight");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    analyzer.kill_9();
}

/// The start fails, the message names `file_name`, and the file is as it
/// was left.
fn assert_refuses_to_start(state_dir: &Path, file_name: &str, what: &str) {
    let path = state_dir.join(file_name);
    let before = std::fs::read(&path).expect("the corrupted file");
    match Analyzer::try_start(state_dir) {
        Ok(analyzer) => panic!("{what}: the analyzer started on a corrupt {file_name}:\n{}", analyzer.log()),
        Err((status, log)) => {
            eprintln!(
                "{what}: {status}: {}",
                log.lines().filter(|line| line.contains(file_name)).collect::<Vec<_>>().join(" / ")
            );
            assert!(log.contains(file_name), "{what}: the message names {file_name} ({status}):\n{log}");
        }
    }
    assert_eq!(std::fs::read(&path).expect("the file is still there"), before, "{what}: {file_name} was rewritten");
}

fn fresh_state(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().join(name);
    populated_state_dir(&state_dir);
    (dir, state_dir)
}

/// The newest journal file of a state directory.
fn newest_journal(state_dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(state_dir)
        .expect("state dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("journal.") && name.ends_with(".bin"))
        .collect();
    names.sort();
    names.pop().expect("a journal file")
}

#[test]
fn corrupt_or_half_written_state_files_stop_startup_naming_the_file() {
    // A snapshot that is not JSON any more.
    let (_dir, state_dir) = fresh_state("garbage-snapshot");
    // Shut down cleanly first so that a snapshot exists.
    // Right after the listening line: the handlers are already installed.
    let analyzer = Analyzer::start(&state_dir);
    let pid = analyzer.child.id();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let mut analyzer = analyzer;
    let exit = analyzer.child.wait().expect("wait");
    assert!(exit.success(), "clean shutdown: {exit}\n{}", analyzer.log());
    drop(analyzer);
    let snapshot = state_dir.join("state.json");
    let text = std::fs::read(&snapshot).expect("a snapshot after a clean shutdown");
    std::fs::write(&snapshot, &text[..text.len() / 2]).expect("cut the snapshot in half");
    assert_refuses_to_start(&state_dir, "state.json", "a half-written snapshot");
    std::fs::write(&snapshot, b"\x00\x01not json at all").expect("garbage");
    assert_refuses_to_start(&state_dir, "state.json", "a garbage snapshot");

    // Both slots of the weights file damaged.
    let (_dir, state_dir) = fresh_state("weights");
    let weights_path = state_dir.join("weights.bin");
    let mut bytes = std::fs::read(&weights_path).expect("weights.bin");
    for byte in bytes.iter_mut().step_by(7) {
        *byte ^= 0x5A;
    }
    std::fs::write(&weights_path, &bytes).expect("damage weights.bin");
    assert_refuses_to_start(&state_dir, "weights.bin", "a weights file with no valid slot");

    // A journal damaged before its last record (not a torn tail).
    let (_dir, state_dir) = fresh_state("journal");
    let journal = newest_journal(&state_dir);
    let journal_path = state_dir.join(&journal);
    let mut bytes = std::fs::read(&journal_path).expect("journal");
    let used = bytes.iter().rposition(|byte| *byte != 0).expect("records in the journal") + 1;
    // A byte inside the first record (past the header), with later records
    // still valid: corruption in the middle, not a torn write at the end.
    let target = used / 4 + 40;
    bytes[target] ^= 0xFF;
    std::fs::write(&journal_path, &bytes).expect("damage the journal");
    assert_refuses_to_start(&state_dir, &journal, "a journal damaged in the middle");
}
