//! A whole product stack: stable and canary backends, the analyzer, and
//! Envoy running the filter, wired together on loopback.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use canary_tests::{BackendOpts, Load, Stack};
//! let stack = Stack::builder().concurrency(2).canary(BackendOpts::default().error_rate(0.01)).start().await?;
//! stack.set_weight(10.0).await?;
//! let report = stack.load(Load::requests(1_000)).await;
//! # Ok(()) }
//! ```
//!
//! Everything runs in a temporary directory (config files, analyzer state,
//! one log per process). Dropping the stack kills every process; when the
//! thread is panicking (a failed assertion) or `CANARY_TEST_KEEP_LOGS` is
//! set, the directory is kept and the log paths are printed.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canary_protocol::Version;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::analyzer::{Analyzer, StopMode};
use crate::backend::{Backend, BackendOpts, BackendStats};
use crate::envoy::{BootstrapParams, Envoy, HotRestart, render_bootstrap};
use crate::http::{self, HttpResponse};
use crate::load::{self, Load, LoadReport};
use crate::paths::Binaries;

/// The filter token the harness configures on both sides.
pub const FILTER_TOKEN: &str = "test-token";
/// Envoy `node.id`, hence the filter's default proxy id.
pub const NODE_ID: &str = "envoy-test";
/// Environment variable bounding how many stacks run at once in one process
/// (default 1: one stack already keeps both cores of a small machine busy).
pub const MAX_STACKS_ENV: &str = "CANARY_TEST_MAX_STACKS";
/// How long a hot-restartable Envoy drains when a later epoch replaces it.
pub const HOT_RESTART_DRAIN_TIME_S: u32 = 1;
/// Environment variable that keeps every stack's directory, not only failed
/// ones.
pub const KEEP_LOGS_ENV: &str = "CANARY_TEST_KEEP_LOGS";

/// Fixed ports for the processes; 0 means "any free port".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    pub stable: u16,
    pub canary: u16,
    pub analyzer: u16,
}

impl Ports {
    /// All ports chosen by the OS: what tests use, so they run in parallel.
    pub fn ephemeral() -> Self {
        Self::default()
    }

    /// The contract's default local ports (10000, 9901, 8081, 8082, 9190),
    /// each replaced by 0 when something already listens on it. The check
    /// binds and releases the port, so a race with another program starting
    /// at the same moment is possible but harmless: that start then fails
    /// with a clear "address in use".
    pub fn contract_defaults_if_free() -> Self {
        let free_or_any = |port: u16| if TcpListener::bind(("127.0.0.1", port)).is_ok() { port } else { 0 };
        Self {
            listener: free_or_any(10_000),
            admin: free_or_any(9_901),
            stable: free_or_any(8_081),
            canary: free_or_any(8_082),
            analyzer: free_or_any(9_190),
        }
    }
}

/// How the filter configuration is given.
#[derive(Debug, Clone)]
enum FilterConfig {
    /// Merged key by key over the harness defaults; `null` removes a key.
    Overrides(Value),
    /// Passed to Envoy verbatim, for malformed-config tests.
    Raw(String),
}

/// Renders Envoy's bootstrap for a stack in place of [`render_bootstrap`];
/// it may write files the bootstrap refers to (an ECDS resource) into the
/// stack's directory, the `&Path`. See `crate::istio`.
pub type BootstrapRenderer = fn(&BootstrapParams, &Path) -> anyhow::Result<String>;

/// Builds a [`Stack`]; see the module docs.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    concurrency: usize,
    filter_config: FilterConfig,
    stable: BackendOpts,
    canary: BackendOpts,
    ports: Ports,
    binaries: Option<Binaries>,
    analyzer_config_toml: String,
    expected_sync_vms: Option<usize>,
    use_permit: bool,
    envoy_host_health: bool,
    hot_restartable: bool,
    bootstrap_renderer: Option<BootstrapRenderer>,
}

/// A running stack. Dropping it stops everything.
#[derive(Debug)]
pub struct Stack {
    envoy: Envoy,
    analyzer: Analyzer,
    stable: Backend,
    canary: Backend,
    concurrency: usize,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    bootstrap_path: PathBuf,
    /// Keep the directory on drop even without a panic (a failed start).
    keep_logs: bool,
    /// Envoy parents replaced by a hot restart, until they exit (killed on
    /// drop like the rest).
    retired_envoys: Vec<Envoy>,
    envoy_binary: PathBuf,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            concurrency: 2,
            filter_config: FilterConfig::Overrides(json!({})),
            stable: BackendOpts::default(),
            canary: BackendOpts::default(),
            ports: Ports::ephemeral(),
            binaries: None,
            analyzer_config_toml: String::new(),
            expected_sync_vms: None,
            use_permit: true,
            envoy_host_health: false,
            hot_restartable: false,
            bootstrap_renderer: None,
        }
    }
}

impl StackBuilder {
    /// Envoy worker threads (`--concurrency`).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Keys merged over the harness's filter configuration, which sets
    /// `analyzer_cluster`, `analyzer_authority`, `analyzer_token` and a
    /// 250 ms `report_interval_ms`. A `null` value removes a default key.
    pub fn filter_config(mut self, overrides: Value) -> Self {
        self.filter_config = FilterConfig::Overrides(overrides);
        self
    }

    /// The filter configuration string exactly as given (may be invalid).
    /// Implies [`StackBuilder::skip_sync_wait`]: a misconfigured filter
    /// never syncs.
    pub fn raw_filter_config(mut self, configuration: &str) -> Self {
        self.filter_config = FilterConfig::Raw(configuration.to_owned());
        self.expected_sync_vms = Some(0);
        self
    }

    pub fn stable(mut self, opts: BackendOpts) -> Self {
        self.stable = opts;
        self
    }

    pub fn canary(mut self, opts: BackendOpts) -> Self {
        self.canary = opts;
        self
    }

    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Extra lines for the analyzer's TOML config file.
    pub fn analyzer_config(mut self, toml_lines: &str) -> Self {
        self.analyzer_config_toml = toml_lines.to_owned();
        self
    }

    /// Points the analyzer's host-health reader at this stack's Envoy admin
    /// (`envoy_admin_urls`, `canary_cluster = "canary"`), so rollout gates
    /// that need canary host health can pass. The analyzer starts before
    /// Envoy, so an ephemeral admin port is chosen up front.
    pub fn envoy_host_health(mut self) -> Self {
        self.envoy_host_health = true;
        self
    }

    /// How many filter VMs must have synced with the analyzer before
    /// `start` returns. The default is `concurrency + 1`: every worker's VM
    /// plus the main thread's, which runs the same tick loop and so also
    /// reports (see the design notes). Waiting for all of them means a
    /// weight change confirmed with `?wait=true` covers every VM that can
    /// route a request.
    pub fn expected_sync_vms(mut self, vms: usize) -> Self {
        self.expected_sync_vms = Some(vms);
        self
    }

    /// Returns as soon as Envoy is ready, without waiting for any filter VM
    /// to reach the analyzer.
    pub fn skip_sync_wait(self) -> Self {
        self.expected_sync_vms(0)
    }

    /// Starts Envoy so that [`Stack::hot_restart_envoy`] can replace it: with
    /// a dynamic shared-memory base id instead of `--disable-hot-restart`,
    /// and on a fixed listener port (a free one is picked up front), since
    /// the new epoch inherits the listen socket by address.
    pub fn hot_restartable(mut self) -> Self {
        self.hot_restartable = true;
        self
    }

    /// Renders Envoy's bootstrap with `renderer` instead of the contract's
    /// local shape (the Istio-shaped tests use `crate::istio`).
    pub fn bootstrap_renderer(mut self, renderer: BootstrapRenderer) -> Self {
        self.bootstrap_renderer = Some(renderer);
        self
    }

    /// Does not take a slot of the process-wide stack limit (the demo runs
    /// one stack and nothing else).
    pub fn without_permit(mut self) -> Self {
        self.use_permit = false;
        self
    }

    /// The filter configuration string this builder will give Envoy.
    pub fn filter_configuration(&self) -> String {
        match &self.filter_config {
            FilterConfig::Raw(raw) => raw.clone(),
            FilterConfig::Overrides(overrides) => {
                let mut config = json!({
                    "analyzer_cluster": "canary_analyzer",
                    "analyzer_authority": "canary-analyzer",
                    "analyzer_token": FILTER_TOKEN,
                    "report_interval_ms": 250,
                });
                if let (Some(config), Some(overrides)) = (config.as_object_mut(), overrides.as_object()) {
                    for (key, value) in overrides {
                        if value.is_null() {
                            config.remove(key);
                        } else {
                            config.insert(key.clone(), value.clone());
                        }
                    }
                }
                config.to_string()
            }
        }
    }

    /// Starts everything and waits until it is ready (see
    /// [`StackBuilder::expected_sync_vms`]).
    pub async fn start(mut self) -> anyhow::Result<Stack> {
        let permit = if self.use_permit { Some(acquire_stack_permit().await) } else { None };
        if self.envoy_host_health {
            if self.ports.admin == 0 {
                self.ports.admin = free_port()?;
            }
            self.analyzer_config_toml = format!(
                "envoy_admin_urls = [\"http://127.0.0.1:{}\"]\ncanary_cluster = \"canary\"\n{}",
                self.ports.admin, self.analyzer_config_toml
            );
        }
        if self.hot_restartable && self.ports.listener == 0 {
            self.ports.listener = free_port()?;
        }
        let binaries = self.binaries.clone().unwrap_or_else(Binaries::from_env);
        binaries.check()?;
        let deadline = Instant::now() + crate::patience().max(Duration::from_secs(20));
        let dir = tempfile::Builder::new().prefix("canary-stack-").tempdir()?;
        let dir_path = dir.path().to_path_buf();
        let started = self.start_processes(&binaries, &dir_path, deadline).await;
        let (stable, canary, analyzer, envoy, bootstrap_path) = match started {
            Ok(parts) => parts,
            Err(error) => {
                // Keep the logs of a stack that failed to start.
                let kept = keep_dir(dir);
                return Err(error.context(format!("stack failed to start; logs in {}", kept.display())));
            }
        };
        let stack = Stack {
            envoy,
            analyzer,
            stable,
            canary,
            concurrency: self.concurrency,
            dir: Some(dir),
            dir_path,
            bootstrap_path,
            keep_logs: false,
            retired_envoys: Vec::new(),
            envoy_binary: binaries.envoy.clone(),
            _permit: permit,
        };
        let expected_sync_vms = self.expected_sync_vms.unwrap_or(self.concurrency + 1);
        if expected_sync_vms > 0
            && let Err(error) = stack.wait_for_data_plane(expected_sync_vms, deadline).await
        {
            let mut stack = stack;
            stack.keep_logs = true;
            return Err(error);
        }
        eprintln!(
            "stack up in {}: listener {} admin {} analyzer {} stable {} canary {}",
            stack.dir_path.display(),
            stack.listener(),
            stack.admin(),
            stack.analyzer.address(),
            stack.stable.address(),
            stack.canary.address()
        );
        Ok(stack)
    }

    async fn start_processes(
        &self,
        binaries: &Binaries,
        dir: &Path,
        deadline: Instant,
    ) -> anyhow::Result<(Backend, Backend, Analyzer, Envoy, PathBuf)> {
        let stable_opts = self.stable.clone().port(self.ports.stable);
        let canary_opts = self.canary.clone().port(self.ports.canary);
        let analyzer_listen = SocketAddr::from(([127, 0, 0, 1], self.ports.analyzer));
        let (stable, canary, analyzer) = tokio::try_join!(
            Backend::start(&binaries.backend, Version::Stable, &stable_opts, dir, deadline),
            Backend::start(&binaries.backend, Version::Canary, &canary_opts, dir, deadline),
            Analyzer::start(
                &binaries.analyzer,
                dir,
                analyzer_listen,
                FILTER_TOKEN,
                &self.analyzer_config_toml,
                deadline
            ),
        )?;
        let filter_configuration = self.filter_configuration();
        let route_header = serde_json::from_str::<Value>(&filter_configuration)
            .ok()
            .and_then(|config| config["route_header"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "x-canary-version".to_owned());
        let params = BootstrapParams {
            node_id: NODE_ID.to_owned(),
            listener_port: self.ports.listener,
            admin_port: self.ports.admin,
            stable: stable.address(),
            canary: canary.address(),
            analyzer: analyzer.address(),
            filter_configuration,
            filter_wasm: binaries.filter_wasm.clone(),
            route_header,
        };
        let bootstrap = match self.bootstrap_renderer {
            Some(render) => render(&params, dir)?,
            None => render_bootstrap(&params),
        };
        let bootstrap_path = dir.join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap)?;
        let hot_restart = if self.hot_restartable {
            HotRestart::First { drain_time_s: HOT_RESTART_DRAIN_TIME_S }
        } else {
            HotRestart::Disabled
        };
        let envoy =
            Envoy::start_with(&binaries.envoy, &bootstrap_path, self.concurrency, dir, deadline, hot_restart).await?;
        Ok((stable, canary, analyzer, envoy, bootstrap_path))
    }
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// Envoy's listener: where traffic goes.
    pub fn listener(&self) -> SocketAddr {
        self.envoy.listener()
    }

    /// Envoy's admin interface.
    pub fn admin(&self) -> SocketAddr {
        self.envoy.admin()
    }

    pub fn analyzer_address(&self) -> SocketAddr {
        self.analyzer.address()
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap_path
    }

    /// Envoy's process id, for reading its `/proc/PID/status`.
    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.process().pid()
    }

    /// The running analyzer's process id; a restart changes it, and it is
    /// `None` while the analyzer is stopped.
    pub fn analyzer_pid(&self) -> Option<u32> {
        self.analyzer.pid()
    }

    pub fn backend(&self, version: Version) -> &Backend {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }

    /// Sends `load` through Envoy.
    pub async fn load(&self, load: Load) -> LoadReport {
        load::run(self.listener(), load).await
    }

    pub async fn backend_stats(&self, version: Version) -> anyhow::Result<BackendStats> {
        self.backend(version).stats().await
    }

    /// Both backends' counters, stable first.
    pub async fn served(&self) -> anyhow::Result<[BackendStats; 2]> {
        Ok([self.stable.stats().await?, self.canary.stats().await?])
    }

    pub async fn reset_backends(&self) -> anyhow::Result<()> {
        self.stable.reset().await?;
        self.canary.reset().await
    }

    /// A call to the analyzer API, whatever the response status.
    pub async fn analyzer_call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<HttpResponse> {
        match body {
            Some(body) => http::send_json(self.analyzer.address(), method, path_and_query, body).await,
            None => http::send(self.analyzer.address(), method, path_and_query, None, http::CONTROL_TIMEOUT).await,
        }
    }

    /// `GET` on the analyzer API; fails unless 2xx.
    pub async fn analyzer_get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        http::get_json(self.analyzer.address(), path_and_query).await
    }

    /// `GET /v1/rollout`.
    pub async fn rollout(&self) -> anyhow::Result<Value> {
        self.analyzer_get("/v1/rollout").await
    }

    /// `PUT /v1/rollout/weight?wait=true`; fails unless 200, so the weight
    /// is applied by every live VM when this returns.
    pub async fn set_weight(&self, canary_percent: f64) -> anyhow::Result<Value> {
        let response = self
            .analyzer_call(
                Method::PUT,
                "/v1/rollout/weight?wait=true",
                Some(&json!({ "canary_percent": canary_percent })),
            )
            .await?;
        response.success_json().with_context(|| format!("set canary weight to {canary_percent}%"))
    }

    /// `POST /v1/rollout/rollback?wait=true`; fails unless 200.
    pub async fn rollback(&self) -> anyhow::Result<Value> {
        let response = self.analyzer_call(Method::POST, "/v1/rollout/rollback?wait=true", None).await?;
        response.success_json().context("rollback")
    }

    /// Envoy's `/stats/prometheus` text.
    pub async fn envoy_prometheus(&self) -> anyhow::Result<String> {
        self.envoy.prometheus().await
    }

    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    pub fn analyzer_log(&self) -> String {
        self.analyzer.log()
    }

    /// SIGKILLs Envoy: every filter VM disappears at once, as in a node
    /// crash. The stack cannot carry traffic afterwards.
    pub fn kill_envoy(&mut self) {
        self.envoy.process_mut().kill();
    }

    /// Hot-restarts Envoy: starts the next epoch on the same bootstrap, base
    /// id and listener port, and returns once it is ready (admin `/ready`,
    /// listener accepting) — which is when the parent stops accepting and
    /// starts draining ([`HOT_RESTART_DRAIN_TIME_S`], every connection told
    /// to close after its next response). The parent stays in the stack
    /// until it exits, after `parent_shutdown_time_s`; see
    /// [`Stack::wait_for_retired_envoys`]. Needs
    /// [`StackBuilder::hot_restartable`].
    pub async fn hot_restart_envoy(&mut self, parent_shutdown_time_s: u32) -> anyhow::Result<()> {
        let Some(base_id) = self.envoy.base_id() else {
            bail!("this stack's Envoy runs with --disable-hot-restart; build it with hot_restartable()");
        };
        let epoch = self.envoy.epoch() + 1;
        let child = Envoy::start_with(
            &self.envoy_binary,
            &self.bootstrap_path,
            self.concurrency,
            &self.dir_path,
            Instant::now() + crate::patience(),
            HotRestart::Child { base_id, epoch, drain_time_s: HOT_RESTART_DRAIN_TIME_S, parent_shutdown_time_s },
        )
        .await?;
        if child.listener() != self.envoy.listener() {
            bail!("epoch {epoch} listens on {}, its parent on {}", child.listener(), self.envoy.listener());
        }
        let parent = std::mem::replace(&mut self.envoy, child);
        self.retired_envoys.push(parent);
        Ok(())
    }

    /// Waits until every Envoy replaced by a hot restart has exited, and
    /// returns their exit statuses.
    pub async fn wait_for_retired_envoys(&mut self, timeout: Duration) -> anyhow::Result<Vec<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut statuses = Vec::new();
        for envoy in &mut self.retired_envoys {
            loop {
                if let Some(status) = envoy.process_mut().exit_status() {
                    statuses.push(status);
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("Envoy epoch {} did not exit within {timeout:?}", envoy.epoch());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(statuses)
    }

    /// The logs of the Envoys a hot restart replaced, oldest first.
    pub fn retired_envoy_logs(&self) -> Vec<String> {
        self.retired_envoys.iter().map(Envoy::log).collect()
    }

    /// Kills the analyzer (SIGKILL) and puts in its place, on the same
    /// address, a listener that accepts connections and never answers:
    /// a hung analyzer. [`HungAnalyzer::stop`] frees the port again for
    /// [`Stack::start_analyzer_again`].
    pub async fn hang_analyzer(&mut self) -> anyhow::Result<HungAnalyzer> {
        self.analyzer.stop(StopMode::Kill).await?;
        let address = self.analyzer.address();
        // tokio sets SO_REUSEADDR, so the killed analyzer's connections in
        // TIME_WAIT do not block the bind.
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("bind the hung analyzer on {address}"))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Held, never read or written: the peer sees a connection whose
            // requests are never answered.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(socket);
            }
        });
        Ok(HungAnalyzer { address, accepted, task })
    }

    pub async fn stop_analyzer(&mut self, mode: StopMode) -> anyhow::Result<()> {
        self.analyzer.stop(mode).await
    }

    /// Starts a stopped analyzer again on the same port and state directory.
    pub async fn start_analyzer_again(&mut self) -> anyhow::Result<()> {
        self.analyzer.start_again(Instant::now() + crate::patience()).await
    }

    pub async fn restart_analyzer(&mut self, mode: StopMode) -> anyhow::Result<()> {
        self.analyzer.restart(mode, Instant::now() + crate::patience()).await
    }

    /// Waits until at least `vms` filter VMs are live and all live ones have
    /// applied the current weights.
    pub async fn wait_for_data_plane(&self, vms: usize, deadline: Instant) -> anyhow::Result<Value> {
        let mut last: Value;
        loop {
            match self.rollout().await {
                Ok(rollout) => {
                    let plane = &rollout["data_plane"];
                    let live = plane["live_workers"].as_u64().unwrap_or(0);
                    if live >= vms as u64 && plane["converged"] == true {
                        return Ok(rollout);
                    }
                    last = rollout;
                }
                Err(error) => last = json!(format!("{error:#}")),
            }
            if Instant::now() >= deadline {
                bail!(
                    "filter VMs did not sync with the analyzer: wanted {vms} live and converged, last \
                     /v1/rollout: {}\n{}",
                    last["data_plane"],
                    self.describe_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Paths of every log, for messages.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> =
            self.retired_envoys.iter().map(|envoy| envoy.process().log_path().to_path_buf()).collect();
        paths.push(self.envoy.process().log_path().to_path_buf());
        paths.extend(self.analyzer.log_paths());
        paths.push(self.stable.process().log_path().to_path_buf());
        paths.push(self.canary.process().log_path().to_path_buf());
        paths
    }

    /// The tails of the Envoy and analyzer logs.
    pub fn describe_logs(&self) -> String {
        let analyzer_log = crate::process::read_log(&self.analyzer.log_path());
        format!(
            "{}\n--- last lines of {} ---\n{}",
            self.envoy.process().describe_log(),
            self.analyzer.log_path().display(),
            crate::process::tail(&analyzer_log, 40)
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Envoy first, so no filter keeps syncing with a dying analyzer.
        self.envoy.process_mut().kill();
        for envoy in &mut self.retired_envoys {
            envoy.process_mut().kill();
        }
        self.analyzer.kill();
        let failed = self.keep_logs || std::thread::panicking();
        if let Some(dir) = self.dir.take()
            && (failed || std::env::var_os(KEEP_LOGS_ENV).is_some())
        {
            let kept = keep_dir(dir);
            eprintln!("stack logs kept in {}:", kept.display());
            for path in self.log_paths() {
                eprintln!("  {}", path.display());
            }
        }
    }
}

/// A listener in the analyzer's place that accepts connections and never
/// answers (see [`Stack::hang_analyzer`]). Dropping it aborts the task,
/// but only [`HungAnalyzer::stop`] waits until the port is free.
#[derive(Debug)]
pub struct HungAnalyzer {
    address: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HungAnalyzer {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted (and left unanswered) so far.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes the listener and every held connection, and waits until the
    /// port is free.
    pub async fn stop(mut self) {
        self.task.abort();
        // Once the aborted task is joined, the listener and the held sockets
        // have been dropped.
        let _ = (&mut self.task).await;
    }
}

impl Drop for HungAnalyzer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that was free a moment ago. Another program could take it before
/// Envoy binds it; that start then fails with a clear "address in use".
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0)).context("pick a free port")?.local_addr()?.port())
}

fn keep_dir(dir: tempfile::TempDir) -> PathBuf {
    dir.keep()
}

/// A slot of the process-wide limit on concurrently running stacks (see
/// [`MAX_STACKS_ENV`]); tests that run Envoy without a [`Stack`] take one too.
pub async fn acquire_stack_permit() -> OwnedSemaphorePermit {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        let max_stacks = std::env::var(MAX_STACKS_ENV).ok().and_then(|value| value.parse().ok()).unwrap_or(1usize);
        Arc::new(Semaphore::new(max_stacks.max(1)))
    });
    // The semaphore is never closed, so acquiring cannot fail.
    Arc::clone(permits).acquire_owned().await.expect("stack semaphore is never closed")
}
