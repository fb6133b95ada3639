//! The real binary on real sockets: a non-loopback address without both
//! tokens is refused at startup with a message that says why and what to
//! set; with both it serves, each token opens only its own endpoints, and
//! neither token appears in the log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_canary-analyzer");
const SRE_TOKEN: &str = "sre-0123456789abcdef";
const FILTER_TOKEN: &str = "filter-0123456789abcdef";

fn analyzer(listen: &str, state_dir: &std::path::Path, tokens: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["--listen", listen, "--state-dir"])
        .arg(state_dir)
        .env_remove("CANARY_FILTER_TOKEN")
        .env_remove("CANARY_SRE_TOKEN")
        .env_remove("CANARY_READ_TOKEN")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in tokens {
        command.env(name, value);
    }
    command
}

/// Waits for the process to exit within `timeout`, killing it (by its pid)
/// if it does not.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn a_non_loopback_address_without_both_tokens_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sre = [("CANARY_SRE_TOKEN", SRE_TOKEN)];
    let filter = [("CANARY_FILTER_TOKEN", FILTER_TOKEN)];
    for (tokens, missing) in [
        (&[][..], &["sre_token", "filter_token"][..]),
        (&sre[..], &["filter_token"][..]),
        (&filter[..], &["sre_token"][..]),
    ] {
        let child = analyzer("0.0.0.0:0", &dir.path().join("state"), tokens).spawn().expect("spawn the analyzer");
        let (status, stderr) = wait_with_timeout(child, Duration::from_secs(20));
        let status = status.unwrap_or_else(|| panic!("still running without {missing:?}: {stderr}"));
        assert!(!status.success(), "{stderr}");
        assert!(!stderr.contains("listening on"), "it served: {stderr}");
        assert!(stderr.contains("listen: 0.0.0.0:0 is not a loopback address"), "{stderr}");
        assert!(stderr.contains("move the canary weights"), "says why: {stderr}");
        for key in missing {
            assert!(stderr.contains(&format!("set {key}")) || stderr.contains(&format!("and {key}")), "{stderr}");
        }
        assert!(!dir.path().join("state").exists(), "refused before touching the state directory");
    }
}

/// One HTTP/1.1 exchange: the status code and body.
fn http(address: SocketAddr, method: &str, path: &str, authorization: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let authorization = authorization.map(|value| format!("authorization: {value}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: analyzer\r\nconnection: close\r\ncontent-type: application/json\r\n\
         {authorization}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn with_both_tokens_it_serves_on_every_interface_and_never_logs_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = [("CANARY_SRE_TOKEN", SRE_TOKEN), ("CANARY_FILTER_TOKEN", FILTER_TOKEN)];
    let mut child = analyzer("0.0.0.0:0", &dir.path().join("state"), &tokens).spawn().expect("spawn the analyzer");
    let stderr = child.stderr.take().expect("stderr");
    // Read the log on a thread, so the pipe never fills and the test can
    // wait for the "listening" line with a deadline.
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let port = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no listening line: {log:?}")
        });
        log.push(line.clone());
        if let Some(address) = line.strip_prefix("canary-analyzer listening on ") {
            break address.parse::<SocketAddr>().expect("address").port();
        }
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let sre = format!("Bearer {SRE_TOKEN}");
    let filter = format!("Bearer {FILTER_TOKEN}");
    let weight = r#"{"canary_percent": 5}"#;
    let (status, body) = http(address, "PUT", "/v1/rollout/weight", None, weight);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("CANARY_SRE_TOKEN"), "says how to configure it: {body}");
    let (status, body) = http(address, "PUT", "/v1/rollout/weight", Some(&filter), weight);
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(address, "PUT", "/v1/rollout/weight", Some(&sre), weight);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(address, "POST", "/v1/filter/sync", Some(&sre), "");
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(address, "GET", "/v1/rollout", None, "");
    assert_eq!(status, 200, "reads are open by default: {body}");
    assert!(body.contains("\"canary_weight_bp\":500"), "{body}");

    // SIGTERM by pid, then a clean exit.
    let terminated = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(terminated.success());
    let (status, _) = wait_with_timeout(child, Duration::from_secs(20));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    reader.join().expect("reader");
    log.extend(lines_rx.try_iter());
    let log = log.join("\n");
    for secret in [SRE_TOKEN, FILTER_TOKEN] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    assert!(log.contains("refused a request"), "debug logging ran, so the check above means something:\n{log}");
}
