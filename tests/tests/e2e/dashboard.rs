//! The web dashboard in a real browser: headless Chromium opens `/` on a
//! stack in the middle of a rollout, sees the numbers move, is refused a
//! rollback without a token (and shows the API's reason), then rolls back
//! with the SRE token through the confirmation dialog; the API confirms the
//! rollout is rolled back. Screenshots go to `target/artifacts/`.
//!
//! Chromium is driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages ended by a NUL byte on the
//! child's fds 3 and 4), the transport Playwright uses. That needs no
//! WebSocket client (none is in the tree) and no crate that generates the
//! whole protocol (`chromiumoxide`, `headless_chrome`: hundreds of thousands
//! of lines to compile for the five commands used here), and no port to
//! find or race for. `sh` maps the child's stdin and stdout to fds 3 and 4,
//! since `std` cannot hand a child other fds without `unsafe`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canary_tests::rollout::{decisions_of, describe_rollout, phase, phase_of};
use canary_tests::{BackendOpts, Load, Stack, http};
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The SRE token the analyzer is configured with, typed into the page.
const SRE_TOKEN: &str = "dashboard-e2e-sre-token";
/// Longest any one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the page may take to show something the API already has: a few
/// of its 2-second polls on a loaded machine.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// What a failing test says when Chromium is missing.
const INSTALL_HINT: &str = "Chromium is not installed: run `cargo xtask install` (it runs `apt-get install -y chromium`), \
     or point CHROMIUM_BIN at a Chromium binary";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_live_rollout_and_rolls_it_back_in_a_browser() {
    let started = Instant::now();
    // Fail, not skip: a missing browser is a broken setup.
    let chromium = chromium_binary().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    let stack = super::stack()
        .analyzer_config(&format!("sre_token = {SRE_TOKEN:?}"))
        .stable(BackendOpts::default().latency_ms(1).latency_jitter_ms(2))
        .canary(BackendOpts::default().latency_ms(3).latency_jitter_ms(4))
        .start()
        .await
        .expect("stack starts");
    let load = stack.start_background_load(
        Load::requests(u64::MAX).rate_per_second(150.0).concurrency(4).max_duration(Duration::from_secs(180)),
    );
    start_rollout(&stack).await.expect("rollout starts");
    stack
        .wait_for_rollout("20% applied", PAGE_TIMEOUT, |view| {
            view["canary_weight_percent"] == 20.0 && view["data_plane"]["converged"] == true
        })
        .await
        .expect("first step");

    let mut browser = Browser::launch(&chromium, &stack.dir().join("chromium")).await.expect("chromium starts");
    let result = drive(&stack, &mut browser).await;
    let browser_log = browser.close().await;
    let report = load.stop().await;
    if let Err(error) = result {
        panic!("{error:#}\nchromium stderr:\n{browser_log}\n{}", stack.describe_logs());
    }
    assert_eq!(report.transport_errors, 0, "load: {:?}", report.first_error);
    eprintln!("dashboard browser test took {:.1} s", started.elapsed().as_secs_f64());
}

/// The user's session, from opening the page to the confirmed rollback.
async fn drive(stack: &Stack, browser: &mut Browser) -> anyhow::Result<()> {
    let url = format!("http://{}/", stack.analyzer_address());
    browser.set_viewport(1366, 768).await?;
    browser.navigate(&url).await?;

    // Values arrive, then change with the next polls.
    let first = browser
        .wait_for(
            "the table to show request rates",
            PAGE_TIMEOUT,
            "(() => { const t = snapshot(); return /\\d/.test(t.rps) && t.phase === 'Progressing' ? t : null; })()",
        )
        .await?;
    let changed = browser
        .wait_for(
            "a value on the page to change",
            PAGE_TIMEOUT,
            &format!(
                "(() => {{ const t = snapshot(); return t.values !== {} && /\\d/.test(t.chart) ? t : null; }})()",
                first["values"]
            ),
        )
        .await?;
    eprintln!("dashboard values: first {} then {}", first["values"], changed["values"]);
    let page = browser.evaluate("document.getElementById('next-step').textContent").await?;
    let next = page.as_str().unwrap_or_default();
    assert!(next.starts_with("Next: increase to 50% in "), "next step: {next:?}");
    let artifacts = canary_tests::paths::target_dir().join("artifacts");
    std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let progressing = artifacts.join("dashboard-progressing.png");
    browser.screenshot(&progressing).await?;
    eprintln!("dashboard screenshot (progressing): {}", progressing.display());

    // Without a token the API refuses, and the page says why.
    click_rollback_and_confirm(browser, None).await?;
    let refused = browser
        .wait_for(
            "the refusal to show",
            PAGE_TIMEOUT,
            "(() => { const t = document.getElementById('action-result').textContent; return t.includes('refused') ? t : null; })()",
        )
        .await?;
    let refused = refused.as_str().unwrap_or_default();
    assert!(refused.contains("401") && refused.contains("SRE token"), "refusal text: {refused:?}");
    let view = stack.rollout().await?;
    assert_eq!(
        phase_of(&view),
        Some(phase::PROGRESSING),
        "refused rollback changed nothing: {}",
        describe_rollout(&view)
    );

    // With the token typed in, the rollback goes through.
    browser
        .evaluate(&format!(
            "(() => {{ document.getElementById('token-input').value = {}; document.getElementById('token-save').click(); return true; }})()",
            json!(SRE_TOKEN)
        ))
        .await?;
    click_rollback_and_confirm(browser, Some("dashboard e2e")).await?;
    browser
        .wait_for(
            "the rollback to be done",
            PAGE_TIMEOUT,
            "(() => { const t = document.getElementById('action-result').textContent; return t === 'rollback: done' ? t : null; })()",
        )
        .await?;

    // The API is the judge.
    let view = stack.rollout().await?;
    assert_eq!(phase_of(&view), Some(phase::ROLLED_BACK), "{}", describe_rollout(&view));
    assert_eq!(view["canary_weight_percent"], 0.0, "{}", describe_rollout(&view));
    let decisions = decisions_of(&view);
    let last = decisions.last().context("no decisions")?;
    assert_eq!(last["actor"], "dashboard", "{last}");
    assert!(last["reason"].as_str().is_some_and(|reason| reason.contains("dashboard e2e")), "{last}");

    // Evidence in plain words, from this rollout's real assessment: the page
    // renders every decision's evidence with the same function.
    let assessment = &view["rollout"]["analysis"];
    assert!(assessment["evidence"].is_object(), "no assessment with evidence: {}", describe_rollout(&view));
    let words = browser.evaluate(&format!("evidenceText({assessment})")).await?;
    let words = words.as_str().unwrap_or_default();
    assert!(
        words.starts_with("canary error rate ")
            && words.contains("% vs stable ")
            && words.contains(", e-value ")
            && words.ends_with(" canary requests"),
        "evidence in words: {words:?} from {assessment}"
    );
    eprintln!("evidence in words: {words}");

    // The page follows, and is kept as the test's artifact.
    browser
        .wait_for(
            "the page to show the rollback",
            PAGE_TIMEOUT,
            "(() => document.getElementById('phase').textContent === 'Rolled back' && document.getElementById('decisions').textContent.includes('dashboard e2e'))()",
        )
        .await?;
    for (width, height, name) in [(1366, 768, "dashboard.png"), (3840, 2160, "dashboard-3840x2160.png")] {
        browser.set_viewport(width, height).await?;
        let path = artifacts.join(name);
        browser.screenshot(&path).await?;
        eprintln!("dashboard screenshot ({width}x{height}): {}", path.display());
    }
    Ok(())
}

/// A rollout that only an operator moves: hour-long pauses. The harness's
/// own start sends no token, so this one carries the SRE token.
async fn start_rollout(stack: &Stack) -> anyhow::Result<()> {
    let spec = json!({
        "name": "checkout-service",
        "canaryVersion": "v2.1.0",
        "stableVersion": "v2.0.3",
        "analysis": { "minCanaryRequests": 50, "latencyTest": false },
        "steps": [
            { "setWeight": 20 }, { "pause": { "duration": "1h" } },
            { "setWeight": 50 }, { "pause": { "duration": "1h" } },
            { "setWeight": 100 },
        ],
    });
    let authorization = format!("Bearer {SRE_TOKEN}");
    let response = http::send_with_headers(
        stack.analyzer_address(),
        Method::POST,
        "/v1/rollouts",
        &[("content-type", "application/json"), ("authorization", &authorization)],
        Some(spec.to_string().into()),
        http::CONTROL_TIMEOUT,
    )
    .await?;
    if response.status != hyper::StatusCode::CREATED {
        bail!("POST /v1/rollouts answered {}: {}", response.status, response.text());
    }
    Ok(())
}

/// Clicks Roll back, waits for the confirmation dialog, types the reason and
/// confirms.
async fn click_rollback_and_confirm(browser: &mut Browser, reason: Option<&str>) -> anyhow::Result<()> {
    browser
        .wait_for(
            "the Roll back button to be enabled",
            PAGE_TIMEOUT,
            "(() => { const b = document.querySelector('button[data-action=rollback]'); if (b.disabled) return null; b.click(); return true; })()",
        )
        .await?;
    browser
        .wait_for(
            "the confirmation dialog",
            PAGE_TIMEOUT,
            &format!(
                "(() => {{ if (document.getElementById('confirm').hidden) return null; \
                 document.getElementById('confirm-reason').value = {}; \
                 document.getElementById('confirm-ok').click(); return true; }})()",
                json!(reason.unwrap_or_default())
            ),
        )
        .await?;
    Ok(())
}

/// `CHROMIUM_BIN`, else `chromium` on `PATH`.
fn chromium_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROMIUM_BIN").filter(|bin| !bin.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("chromium")).find(|path| path.is_file())
}

/// Defined in the page before each evaluation: what the test reads of it.
const SNAPSHOT_JS: &str = "window.snapshot = () => { \
    const text = (selector) => Array.from(document.querySelectorAll(selector)).map((e) => e.textContent).join(' | '); \
    return { phase: document.getElementById('phase').className.replace('phase phase-', ''), \
             rps: text('#versions-body .rps'), chart: text('.chart .value'), \
             values: text('#versions-body td') + ' || ' + text('.chart .value') }; };";

/// One headless Chromium with one page, over the DevTools pipe.
struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: BufReader<ChildStdout>,
    session_id: String,
    next_id: u64,
    stderr_path: PathBuf,
}

impl Browser {
    async fn launch(chromium: &Path, profile_dir: &Path) -> anyhow::Result<Browser> {
        std::fs::create_dir_all(profile_dir).with_context(|| format!("creating {}", profile_dir.display()))?;
        let stderr_path = profile_dir.with_extension("log");
        let stderr =
            std::fs::File::create(&stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium)
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        let to_browser = child.stdin.take().context("chromium stdin")?;
        let from_browser = BufReader::new(child.stdout.take().context("chromium stdout")?);
        let mut browser =
            Browser { child, to_browser, from_browser, session_id: String::new(), next_id: 0, stderr_path };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = target["targetId"].as_str().context("no targetId")?.to_owned();
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await?;
        browser.session_id = attached["sessionId"].as_str().context("no sessionId")?.to_owned();
        browser.page("Page.enable", json!({})).await?;
        browser.page("Page.addScriptToEvaluateOnNewDocument", json!({ "source": SNAPSHOT_JS })).await?;
        Ok(browser)
    }

    async fn set_viewport(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.page("Emulation.setDeviceMetricsOverride", metrics).await?;
        Ok(())
    }

    async fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let answer = self.page("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("navigating to {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page and returns its value; a thrown
    /// exception is an error.
    async fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let answer = self.page("Runtime.evaluate", params).await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Evaluates `expression` every 200 ms until it is neither `null` nor
    /// `false`, and returns that value.
    async fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.evaluate(expression).await;
            if let Ok(value) = &value
                && !value.is_null()
                && *value != Value::Bool(false)
            {
                return Ok(value.clone());
            }
            if Instant::now() >= deadline {
                let page = self.evaluate("document.body.innerText").await.unwrap_or_default();
                bail!("waiting for {what}: not there after {timeout:?} (last {value:?}); the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let answer = self.page("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let png = decode_base64(answer["data"].as_str().context("no screenshot data")?)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// A command to the attached page.
    async fn page(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session_id = self.session_id.clone();
        self.call(Some(&session_id), method, params).await
    }

    /// Sends one command and reads messages until its answer; events in
    /// between are not needed (the test polls the page) and are dropped.
    async fn call(&mut self, session_id: Option<&str>, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session_id) = session_id {
            message["sessionId"] = json!(session_id);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        let exchange = async {
            self.to_browser.write_all(&bytes).await.context("writing to chromium")?;
            self.to_browser.flush().await.context("writing to chromium")?;
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                let read = self.from_browser.read_until(0, &mut buffer).await.context("reading from chromium")?;
                if read == 0 {
                    bail!("chromium closed the DevTools pipe");
                }
                let answer: Value = serde_json::from_slice(buffer.strip_suffix(&[0]).unwrap_or(&buffer))
                    .context("chromium sent a message that is not JSON")?;
                if answer["id"] != id {
                    continue;
                }
                if let Some(error) = answer.get("error") {
                    bail!("{error}");
                }
                return Ok(answer["result"].clone());
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method}: no answer within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| method.to_owned())
    }

    /// Asks Chromium to quit, kills it if it does not, and returns its
    /// stderr.
    async fn close(mut self) -> String {
        let _ = self.call(None, "Browser.close", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Standard base64 (with padding), for the one screenshot: the tree has no
/// base64 crate, and this is not worth a dependency.
fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let value = |byte: u8| -> anyhow::Result<u32> {
        Ok(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("screenshot data: {:?} is not base64", byte as char),
        }
        .into())
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut bits = 0u32;
        for (index, &byte) in chunk.iter().enumerate() {
            bits |= value(byte)? << (18 - 6 * index);
        }
        let decoded = bits.to_be_bytes();
        out.extend_from_slice(&decoded[1..chunk.len()]);
    }
    Ok(out)
}

#[test]
fn decodes_base64() {
    for (text, want) in [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar")] {
        assert_eq!(decode_base64(text).expect(text), want.as_bytes(), "{text}");
    }
    assert!(decode_base64("Zm9v!").is_err());
}
