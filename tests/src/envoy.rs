//! Envoy: bootstrap rendering, startup, readiness and `--mode validate`.
//!
//! The rendered bootstrap has the structure of the contract's local config:
//! one listener whose route table sends `x-canary-version: canary` to the
//! `canary` cluster and everything else to `stable`, the wasm filter
//! (`canary_split`, V8, `FAIL_OPEN`, JSON configuration in a `StringValue`)
//! in front of the router, and a `canary_analyzer` cluster for the filter's
//! long-poll.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::http;
use crate::process::ChildProcess;

/// The values a bootstrap is rendered from.
#[derive(Debug, Clone)]
pub struct BootstrapParams {
    /// Envoy's `node.id`; the filter's default proxy id.
    pub node_id: String,
    /// 0 lets Envoy pick; read the real port from the admin `/listeners`.
    pub listener_port: u16,
    /// 0 lets Envoy pick; read it from `--admin-address-path`.
    pub admin_port: u16,
    pub stable: SocketAddr,
    pub canary: SocketAddr,
    pub analyzer: SocketAddr,
    /// The filter's configuration string, passed verbatim (it may be
    /// deliberately malformed).
    pub filter_configuration: String,
    pub filter_wasm: PathBuf,
    /// The header the route table matches on.
    pub route_header: String,
}

/// How a bootstrap splits traffic. The tests and the demo only use
/// [`BootstrapShape::HeaderRoute`] (what [`render_bootstrap`] renders); the
/// benchmarks compare it with Envoy's native split on the same skeleton
/// (listener, early header mutation, clusters, router), so that only the
/// route and the wasm filter differ between the variants they measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootstrapShape {
    /// The contract's shape: the wasm filter (`params.filter_wasm` with
    /// `params.filter_configuration`) sets the route header, and the route
    /// table sends `canary` to the canary cluster, anything else to stable.
    #[default]
    HeaderRoute,
    /// No wasm filter: one route with `weighted_clusters`, `canary_percent`
    /// to canary and the rest to stable (what Istio programs for a
    /// weight-based split). `filter_wasm` and `filter_configuration` are
    /// ignored.
    WeightedClusters { canary_percent: u32 },
}

/// Renders the Envoy bootstrap YAML.
pub fn render_bootstrap(params: &BootstrapParams) -> String {
    render_bootstrap_shaped(params, BootstrapShape::HeaderRoute)
}

/// Renders the Envoy bootstrap YAML with the given split; see
/// [`BootstrapShape`].
pub fn render_bootstrap_shaped(params: &BootstrapParams, shape: BootstrapShape) -> String {
    let routes_and_filters = match shape {
        BootstrapShape::HeaderRoute => format!(
            r#"              # Only an explicit header value selects canary; the default
              # route is stable, so a missing or failed filter means stable.
              - match:
                  prefix: "/"
                  headers:
                  - name: {route_header}
                    string_match: {{ exact: canary }}
                route: {{ cluster: canary }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: stable }}
          http_filters:
          - name: canary_split
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: canary_split
                root_id: canary_split
                failure_policy: FAIL_OPEN
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: canary_split
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {wasm}
"#,
            route_header = quote(&params.route_header),
            configuration = quote(&params.filter_configuration),
            wasm = quote(&params.filter_wasm.display().to_string()),
        ),
        BootstrapShape::WeightedClusters { canary_percent } => format!(
            r#"              - match: {{ prefix: "/" }}
                route:
                  weighted_clusters:
                    clusters:
                    - {{ name: stable, weight: {stable_percent} }}
                    - {{ name: canary, weight: {canary_percent} }}
          http_filters:
"#,
            stable_percent = 100u32.saturating_sub(canary_percent),
            canary_percent = canary_percent.min(100),
        ),
    };
    let cluster = static_cluster_yaml;
    format!(
        r#"# Rendered by the canary-tests harness.
node:
  id: {node_id}
  cluster: canary-test
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          # As in envoy-config/local/envoy.yaml: drop the client's route
          # header before routing, so a skipped (failed) filter means stable.
          early_header_mutation_extensions:
          - name: strip_client_route_header
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: {route_header}
          route_config:
            name: canary_routes
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
{routes_and_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{stable}{canary}{analyzer}"#,
        routes_and_filters = routes_and_filters,
        node_id = quote(&params.node_id),
        admin_port = params.admin_port,
        listener_port = params.listener_port,
        route_header = quote(&params.route_header),
        stable = cluster("stable", params.stable, "1s"),
        canary = cluster("canary", params.canary, "1s"),
        // A dead analyzer must fail the sync fast, not hold a worker's slot.
        analyzer = cluster("canary_analyzer", params.analyzer, "0.25s"),
    )
}

/// Runs `envoy --mode validate -c config` from `working_dir` (relative paths
/// in the config resolve against it).
pub fn validate(envoy: &Path, config: &Path, working_dir: &Path) -> anyhow::Result<Output> {
    Command::new(envoy)
        .args(["--mode", "validate", "-l", "warn", "--disable-hot-restart", "-c"])
        .arg(config)
        .current_dir(working_dir)
        .output()
        .with_context(|| format!("run {} --mode validate", envoy.display()))
}

/// How an Envoy process takes part in hot restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HotRestart {
    /// `--disable-hot-restart`: no shared memory, so parallel stacks cannot
    /// collide on a base id. What every test uses unless it restarts Envoy.
    #[default]
    Disabled,
    /// Epoch 0 with a base id Envoy picks itself (`--use-dynamic-base-id`),
    /// written to `envoy-base-id` in the directory, so a test can start
    /// epoch 1 without colliding with other Envoys on the machine.
    ///
    /// `drain_time_s` is how this process drains once a later epoch
    /// replaces it: a parent drains by its own flags, not its child's.
    /// Envoy's default (600 s, gradual) closes almost no keep-alive
    /// connection within a test's few seconds, so the parent would serve
    /// until it is shut down; both epochs therefore get
    /// `--drain-strategy immediate`, which tells every connection to close
    /// after its next response as soon as the drain starts.
    First { drain_time_s: u32 },
    /// A later epoch taking over from the running parent: it inherits the
    /// listen sockets and makes the parent exit after
    /// `parent_shutdown_time_s`; `drain_time_s` as for `First`.
    Child { base_id: u32, epoch: u32, drain_time_s: u32, parent_shutdown_time_s: u32 },
}

impl HotRestart {
    fn epoch(self) -> u32 {
        match self {
            HotRestart::Disabled | HotRestart::First { .. } => 0,
            HotRestart::Child { epoch, .. } => epoch,
        }
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    process: ChildProcess,
    admin: SocketAddr,
    listener: SocketAddr,
    base_id: Option<u32>,
    epoch: u32,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` and waits until the admin says it is
    /// ready and the listener accepts TCP connections.
    ///
    /// Readiness deliberately sends no HTTP request through the listener:
    /// it would reach a backend and be counted by the filter, and the tests
    /// compare those counts exactly.
    pub async fn start(
        binary: &Path,
        bootstrap: &Path,
        concurrency: usize,
        dir: &Path,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        Self::start_with(binary, bootstrap, concurrency, dir, deadline, HotRestart::Disabled).await
    }

    /// [`Envoy::start`] with a hot-restart role. Epoch `n > 0` logs to
    /// `envoy.<n>.log` and writes `envoy-admin.<n>.address`.
    pub async fn start_with(
        binary: &Path,
        bootstrap: &Path,
        concurrency: usize,
        dir: &Path,
        deadline: Instant,
        hot_restart: HotRestart,
    ) -> anyhow::Result<Self> {
        let epoch = hot_restart.epoch();
        let suffix = if epoch == 0 { String::new() } else { format!(".{epoch}") };
        let admin_address_path = dir.join(format!("envoy-admin{suffix}.address"));
        let base_id_path = dir.join("envoy-base-id");
        // A file left by an earlier Envoy in this directory would name a
        // dead admin port.
        let _ = std::fs::remove_file(&admin_address_path);
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .args(["-l", "info"]);
        match hot_restart {
            // No shared memory: parallel stacks cannot collide on a base id.
            HotRestart::Disabled => {
                command.arg("--disable-hot-restart");
            }
            HotRestart::First { drain_time_s } => {
                let _ = std::fs::remove_file(&base_id_path);
                command.arg("--use-dynamic-base-id").arg("--base-id-path").arg(&base_id_path);
                command.args(["--drain-time-s", &drain_time_s.to_string(), "--drain-strategy", "immediate"]);
            }
            HotRestart::Child { base_id, epoch, drain_time_s, parent_shutdown_time_s } => {
                command
                    .args(["--base-id", &base_id.to_string(), "--restart-epoch", &epoch.to_string()])
                    .args(["--parent-shutdown-time-s", &parent_shutdown_time_s.to_string()])
                    .args(["--drain-time-s", &drain_time_s.to_string(), "--drain-strategy", "immediate"]);
            }
        }
        let name = if epoch == 0 { "envoy".to_owned() } else { format!("envoy (epoch {epoch})") };
        let mut process = ChildProcess::spawn(&name, command, &dir.join(format!("envoy{suffix}.log")))?;
        let admin = loop {
            if let Ok(text) = std::fs::read_to_string(&admin_address_path)
                && let Ok(admin) = text.trim().parse::<SocketAddr>()
            {
                break admin;
            }
            process.fail_if_exited("before writing its admin address")?;
            if Instant::now() >= deadline {
                bail!("envoy did not write {} in time\n{}", admin_address_path.display(), process.describe_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Ok(response) = http::get(admin, "/ready").await
                && response.status.is_success()
            {
                break;
            }
            process.fail_if_exited("before becoming ready")?;
            if Instant::now() >= deadline {
                bail!("envoy admin /ready did not answer 200 in time\n{}", process.describe_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = listener_address(admin, "ingress").await.with_context(|| process.describe_log())?;
        loop {
            if tokio::net::TcpStream::connect(listener).await.is_ok() {
                break;
            }
            process.fail_if_exited("before its listener accepted connections")?;
            if Instant::now() >= deadline {
                bail!("envoy listener {listener} did not accept connections in time\n{}", process.describe_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let base_id = match hot_restart {
            HotRestart::Disabled => None,
            HotRestart::Child { base_id, .. } => Some(base_id),
            HotRestart::First { .. } => {
                let text = std::fs::read_to_string(&base_id_path)
                    .with_context(|| format!("envoy did not write {}", base_id_path.display()))?;
                Some(text.trim().parse().with_context(|| format!("base id {text:?} in {}", base_id_path.display()))?)
            }
        };
        Ok(Self { process, admin, listener, base_id, epoch })
    }

    /// The shared-memory base id, when started for hot restarts.
    pub fn base_id(&self) -> Option<u32> {
        self.base_id
    }

    /// The hot-restart epoch (0 for the first or only Envoy).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Envoy's `/stats/prometheus` text.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        let response = http::get(self.admin, "/stats/prometheus").await?;
        if !response.status.is_success() {
            bail!("envoy /stats/prometheus answered {}", response.status);
        }
        Ok(response.text())
    }
}

/// The bound address of listener `name`, from the admin `/listeners`.
async fn listener_address(admin: SocketAddr, name: &str) -> anyhow::Result<SocketAddr> {
    let listeners = http::get_json(admin, "/listeners?format=json").await?;
    let statuses = listeners["listener_statuses"].as_array().cloned().unwrap_or_default();
    for status in statuses {
        if status["name"] == name {
            let socket = &status["local_address"]["socket_address"];
            let ip = socket["address"].as_str().unwrap_or("127.0.0.1");
            let port = socket["port_value"].as_u64().unwrap_or(0);
            return format!("{ip}:{port}").parse().with_context(|| format!("listener address in {status}"));
        }
    }
    bail!("envoy has no listener named {name}: {listeners}")
}

/// The sum of all series of a Prometheus metric whose name ends with
/// `name_suffix` (Envoy may or may not prefix custom wasm metrics), or
/// `None` when there is no such series.
pub fn prometheus_value(text: &str, name_suffix: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let metric = series.split('{').next().unwrap_or(series);
        if (metric == name_suffix || metric.ends_with(&format!("_{name_suffix}")))
            && let Ok(value) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// One static cluster of a rendered bootstrap, as a YAML list item. The
/// name is quoted: Istio-style names (`outbound|PORT|SUBSET|HOST`) carry `|`.
pub fn static_cluster_yaml(name: &str, address: SocketAddr, connect_timeout: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: {connect_timeout}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}
"#,
        name = quote(name),
        ip = address.ip(),
        port = address.port(),
    )
}

/// `text` as a YAML double-quoted scalar: a JSON string literal is one, so
/// arbitrary configuration text, paths and Istio-style names quote safely.
pub fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_clusters_shape_keeps_the_skeleton_and_drops_the_filter() {
        let params = BootstrapParams {
            node_id: "bench".to_owned(),
            listener_port: 0,
            admin_port: 0,
            stable: SocketAddr::from(([127, 0, 0, 1], 8081)),
            canary: SocketAddr::from(([127, 0, 0, 1], 8082)),
            analyzer: SocketAddr::from(([127, 0, 0, 1], 9190)),
            filter_configuration: "{}".to_owned(),
            filter_wasm: PathBuf::from("/nowhere/filter.wasm"),
            route_header: "x-canary-version".to_owned(),
        };
        let header_route = render_bootstrap(&params);
        assert_eq!(header_route, render_bootstrap_shaped(&params, BootstrapShape::default()));
        let native = render_bootstrap_shaped(&params, BootstrapShape::WeightedClusters { canary_percent: 10 });
        assert!(native.contains("- { name: stable, weight: 90 }\n"), "{native}");
        assert!(native.contains("- { name: canary, weight: 10 }\n"), "{native}");
        assert!(!native.contains("wasm"), "{native}");
        // Same cost for every variant: the early header mutation and the
        // router stay.
        for text in [&header_route, &native] {
            assert!(text.contains("- remove: \"x-canary-version\""), "{text}");
            assert!(text.contains("envoy.filters.http.router"), "{text}");
        }
    }

    #[test]
    fn prometheus_lookup() {
        let text = "# TYPE canary_split_requests_stable counter\ncanary_split_requests_stable{} 12\n\
                    envoy_wasmcustom_canary_split_requests_canary 3\nother 1\n";
        assert_eq!(prometheus_value(text, "canary_split_requests_stable"), Some(12.0));
        assert_eq!(prometheus_value(text, "canary_split_requests_canary"), Some(3.0));
        assert_eq!(prometheus_value(text, "canary_split_weight_bp"), None);
    }
}
