//! An Envoy bootstrap shaped the way istiod (plus the istio-agent) configures
//! a sidecar for the manifests in `envoy-config/istio/`: the WasmPlugin
//! `payments/canary-split`, the VirtualService and DestinationRule of
//! `payment-service`, and the analyzer Service. The e2e tests in
//! `tests/e2e/istio.rs` run the split, rollback and reporting checks on it.
//!
//! What is mirrored, with the Istio source it comes from (istio/istio), is
//! listed in `envoy-config/istio/ENVOY-TRANSLATION.md`; the comments below
//! name the same files. The parts that are not Istio's own (static
//! clusters instead of EDS, the listener's name, one extra domain for the
//! test client's `Host`) are harness plumbing and are listed there too.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::envoy::{BootstrapParams, quote};

/// The namespace the manifests deploy to (`envoy-config/istio/base/kustomization.yaml`).
pub const NAMESPACE: &str = "payments";
/// The routed service's FQDN and port (the VirtualService's `hosts`).
pub const SERVICE_HOST: &str = "payment-service.payments.svc.cluster.local";
pub const SERVICE_PORT: u16 = 8080;
/// The analyzer Service's FQDN and port.
pub const ANALYZER_HOST: &str = "canary-analyzer.payments.svc.cluster.local";
pub const ANALYZER_PORT: u16 = 9190;
/// `metadata.name` of the WasmPlugin.
pub const WASM_PLUGIN_NAME: &str = "canary-split";
/// `spec.pluginName`, which istiod passes as the root id.
pub const PLUGIN_NAME: &str = "canary_split";
/// The WasmPlugin's `metadata.resourceVersion` in the test; istiod copies it
/// into the VM environment so the agent can tell edits apart.
pub const RESOURCE_VERSION: &str = "4711";
/// `WasmResourceVersionEnv` in pilot/pkg/model/extensions.go.
pub const RESOURCE_VERSION_ENV: &str = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION";
/// `WasmPolicyEnv` in pilot/pkg/model/extensions.go, set from `imagePullPolicy: IfNotPresent`.
pub const PULL_POLICY_ENV: &str = "ISTIO_META_WASM_IMAGE_PULL_POLICY";
/// A sidecar's node id as the istio-agent builds it: `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`
/// (pilot/pkg/model/context.go `Proxy.ServiceNode`). The filter reports it as its proxy id.
pub const NODE_ID: &str = "sidecar~127.0.0.1~checkout-7d9f8b6c5-x2x4q.payments~payments.svc.cluster.local";
/// The ECDS resource file the bootstrap points at, in the stack directory.
pub const ECDS_FILE: &str = "ecds.yaml";

/// `outbound|PORT|SUBSET|HOST`: istiod's cluster name for a service port
/// and DestinationRule subset (`BuildSubsetKey` in pilot/pkg/model/service.go).
pub fn subset_cluster(subset: &str, host: &str, port: u16) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The analyzer's cluster: no subset, so `outbound|9190||canary-analyzer...`.
pub fn analyzer_cluster() -> String {
    subset_cluster("", ANALYZER_HOST, ANALYZER_PORT)
}

pub fn stable_cluster() -> String {
    subset_cluster("stable", SERVICE_HOST, SERVICE_PORT)
}

pub fn canary_cluster() -> String {
    subset_cluster("canary", SERVICE_HOST, SERVICE_PORT)
}

/// The ECDS and HCM filter name: `WasmPluginResourceNamePrefix` + `namespace.name`
/// (`convertToWasmPluginWrapper` in pilot/pkg/model/extensions.go).
pub fn filter_resource_name() -> String {
    format!("extensions.istio.io/wasmplugin/{NAMESPACE}.{WASM_PLUGIN_NAME}")
}

/// The WasmPlugin's `pluginConfig` for a test stack: what
/// `envoy-config/istio/base/wasmplugin.yaml` sets, with this stack's token
/// and a short report interval. Stack builders merge it over their defaults.
pub fn plugin_config(analyzer_token: &str) -> Value {
    json!({
        "analyzer_cluster": analyzer_cluster(),
        "analyzer_authority": format!("{ANALYZER_HOST}:{ANALYZER_PORT}"),
        "analyzer_token": analyzer_token,
        "report_interval_ms": 250,
        "route_header": "x-canary-version",
        "initial_canary_weight_bp": 0,
    })
}

/// Renders the bootstrap and writes the ECDS resource it loads the filter
/// from into `dir`. Fits `StackBuilder::bootstrap_renderer`.
pub fn render_istio_bootstrap(params: &BootstrapParams, dir: &Path) -> anyhow::Result<String> {
    write_ecds_and_render(params, dir, EcdsResource::Wasm(ConfigEncoding::StringValue))
}

/// The same sidecar after the istio-agent failed to pull the WasmPlugin's
/// image under `failStrategy: FAIL_OPEN`: the agent replaces the ECDS
/// resource with an allow-all RBAC filter (`allowHTTPTypedConfig` in
/// pkg/wasm/convert.go), so no wasm filter runs and nothing writes the
/// route header. Only the EnvoyFilter's early header mutation then keeps a
/// client from choosing canary.
pub fn render_istio_bootstrap_pull_failed(params: &BootstrapParams, dir: &Path) -> anyhow::Result<String> {
    write_ecds_and_render(params, dir, EcdsResource::PullFailedFailOpen)
}

/// [`render_istio_bootstrap_pull_failed`] in a mesh without the
/// EnvoyFilter: what the guard protects against, for the tests to show
/// that a client-sent header then does select canary.
pub fn render_istio_bootstrap_pull_failed_unguarded(params: &BootstrapParams, dir: &Path) -> anyhow::Result<String> {
    let ecds_path = dir.join(ECDS_FILE);
    std::fs::write(&ecds_path, render_ecds_pull_failed())
        .with_context(|| format!("writing {}", ecds_path.display()))?;
    Ok(render_bootstrap(params, &ecds_path, ClientHeaderGuard::Absent))
}

/// Like [`render_istio_bootstrap`], but the plugin configuration travels as
/// a `google.protobuf.Struct`, as a hand-written EnvoyFilter might send it.
/// Envoy hands a Struct to the VM as serialized protobuf, not JSON, so this
/// shows the filter depends on istiod's StringValue.
pub fn render_istio_bootstrap_struct_config(params: &BootstrapParams, dir: &Path) -> anyhow::Result<String> {
    write_ecds_and_render(params, dir, EcdsResource::Wasm(ConfigEncoding::Struct))
}

/// How the plugin configuration is wrapped in the ECDS resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigEncoding {
    /// What istiod sends: the JSON text in a `google.protobuf.StringValue`.
    StringValue,
    /// The same object as a `google.protobuf.Struct`.
    Struct,
}

/// What the ECDS resource for the WasmPlugin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EcdsResource {
    /// The wasm filter, its configuration wrapped as given.
    Wasm(ConfigEncoding),
    /// The agent's pass-through after a failed pull under FAIL_OPEN.
    PullFailedFailOpen,
}

fn write_ecds_and_render(params: &BootstrapParams, dir: &Path, resource: EcdsResource) -> anyhow::Result<String> {
    let ecds_path = dir.join(ECDS_FILE);
    let ecds = match resource {
        EcdsResource::Wasm(encoding) => render_ecds(params, encoding),
        EcdsResource::PullFailedFailOpen => render_ecds_pull_failed(),
    };
    std::fs::write(&ecds_path, ecds).with_context(|| format!("writing {}", ecds_path.display()))?;
    Ok(render_bootstrap(params, &ecds_path, ClientHeaderGuard::Present))
}

/// Whether the EnvoyFilter canary-split-strip-client-route-header is
/// applied to the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientHeaderGuard {
    Present,
    Absent,
}

/// The ECDS resource istiod sends for the WasmPlugin, after the istio-agent
/// has rewritten it (pkg/wasm/convert.go): the agent pulls the OCI image,
/// verifies it and replaces `vm_config.code.remote` with a `local.filename`
/// in its cache, and strips the pull-secret variable. Here the module file
/// stands for that cache entry.
pub fn render_ecds(params: &BootstrapParams, encoding: ConfigEncoding) -> String {
    let configuration = match encoding {
        ConfigEncoding::StringValue => format!(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n        value: {}",
            quote(&params.filter_configuration)
        ),
        // A JSON object is a YAML flow mapping; the caller passes one.
        ConfigEncoding::Struct => format!(
            "\"@type\": type.googleapis.com/google.protobuf.Struct\n        value: {}",
            params.filter_configuration
        ),
    };
    format!(
        r#"# Rendered by the canary-tests harness: the WasmPlugin {NAMESPACE}/{WASM_PLUGIN_NAME} as ECDS delivers it.
version_info: {version}
resources:
- "@type": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig
  name: {resource_name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      # pilot/pkg/model/extensions.go buildPluginConfig: name is namespace.name,
      # root_id is spec.pluginName, pluginConfig becomes JSON in a StringValue
      # (protomarshal.ToJSON of the Struct), failStrategy FAIL_OPEN becomes
      # failure_policy (Istio >= 1.25).
      name: {plugin_config_name}
      root_id: {PLUGIN_NAME}
      configuration:
        {configuration}
      failure_policy: FAIL_OPEN
      vm_config:
        # buildVMConfig: the V8 runtime, no vm_id, and the environment
        # istiod adds for the agent (the agent strips only the pull secret).
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {wasm}
        environment_variables:
          key_values:
            {PULL_POLICY_ENV}: IfNotPresent
            {RESOURCE_VERSION_ENV}: {version}
"#,
        version = quote(RESOURCE_VERSION),
        resource_name = quote(&filter_resource_name()),
        plugin_config_name = quote(&format!("{NAMESPACE}.{WASM_PLUGIN_NAME}")),
        wasm = quote(&params.filter_wasm.display().to_string()),
    )
}

/// Replaces the ECDS resource file in `dir` with `contents` the way a
/// config agent must for Envoy's path watcher to see it: written to a
/// temporary file in the same directory, then renamed over the old one
/// (Envoy watches for the file being moved into place, not for writes).
pub fn replace_ecds(dir: &Path, contents: &str) -> anyhow::Result<()> {
    let staged = dir.join(format!("{ECDS_FILE}.next"));
    std::fs::write(&staged, contents).with_context(|| format!("writing {}", staged.display()))?;
    let target = dir.join(ECDS_FILE);
    std::fs::rename(&staged, &target).with_context(|| format!("renaming {} to {}", staged.display(), target.display()))
}

/// The ECDS resource the istio-agent sends Envoy instead of the wasm filter
/// when it cannot fetch the module and the WasmPlugin says FAIL_OPEN
/// (pkg/wasm/convert.go: an RBAC filter with no rules, which allows every
/// request, and the stat prefix `wasm-default-allow`). FAIL_CLOSE gets an
/// RBAC filter with empty rules instead, which denies every request (403).
pub fn render_ecds_pull_failed() -> String {
    format!(
        r#"# Rendered by the canary-tests harness: the WasmPlugin {NAMESPACE}/{WASM_PLUGIN_NAME} after a failed pull (FAIL_OPEN).
version_info: {version}
resources:
- "@type": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig
  name: {resource_name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules_stat_prefix: wasm-default-allow
"#,
        version = quote(RESOURCE_VERSION),
        resource_name = quote(&filter_resource_name()),
    )
}

/// The sidecar's outbound HTTP listener for port 8080 with the route table of
/// the VirtualService and the clusters of the DestinationRule subsets.
fn render_bootstrap(params: &BootstrapParams, ecds_path: &Path, guard: ClientHeaderGuard) -> String {
    // istiod's default connect timeout (MeshConfig.connectTimeout).
    let cluster = |name: &str, address: SocketAddr| crate::envoy::static_cluster_yaml(name, address, "10s");
    // Istio's outbound routes: retries on connect failures and 503s, no
    // route timeout (pilot/pkg/networking/core/route/retry/retry.go
    // DefaultPolicy, pilot/pkg/networking/core/route/route.go translateRoute).
    let route = |cluster: &str| {
        format!(
            r#"route:
                  cluster: {cluster}
                  timeout: 0s
                  max_grpc_timeout: 0s
                  retry_policy:
                    retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                    num_retries: 2
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: "5"
                    retriable_status_codes: [503]"#,
            cluster = quote(cluster),
        )
    };
    let host = SERVICE_HOST;
    let short = host.split('.').next().unwrap_or(host);
    let port = SERVICE_PORT;
    format!(
        r#"# Rendered by the canary-tests harness: an Istio sidecar's outbound view of
# {host}:{port} (see envoy-config/istio/ENVOY-TRANSLATION.md).
node:
  id: {node_id}
  cluster: checkout.{NAMESPACE}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  # istiod names it 0.0.0.0_{port}; the harness finds its listener as "ingress".
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_{port}
{early_header_mutation}          route_config:
            # Outbound route configurations are named by port.
            name: "{port}"
            validate_clusters: false
            virtual_hosts:
            # pilot/pkg/networking/core/httproute.go: one virtual host per
            # service and port, named host:port, with the service's short
            # and long names as domains. "canary.test" is the test client's
            # Host header standing in for them.
            - name: "{host}:{port}"
              domains: ["{host}", "{host}:{port}", "{short}", "{short}:{port}", "{short}.{NAMESPACE}", "{short}.{NAMESPACE}:{port}", "{short}.{NAMESPACE}.svc", "{short}.{NAMESPACE}.svc:{port}", "canary.test"]
              routes:
              # The VirtualService's http routes, in order
              # (envoy-config/istio/base/virtualservice.yaml).
              - name: canary
                match:
                  prefix: "/"
                  case_sensitive: true
                  headers:
                  - name: {route_header}
                    string_match: {{ exact: canary }}
                {canary_route}
              - name: stable
                match: {{ prefix: "/", case_sensitive: true }}
                {stable_route}
          # pilot/pkg/networking/core/listener_builder.go
          # buildHTTPConnectionManager: WasmPlugins of phase AUTHN go before
          # Istio's authn filters, AUTHZ before its authz filters, STATS (this
          # plugin, envoy-config/istio/base/wasmplugin.yaml) after them; then
          # grpc_stats, alpn, fault, cors, the telemetry filters and the
          # router. Of those, the filters upstream Envoy has are kept here
          # (Istio's own istio.metadata_exchange, istio.alpn and istio.stats
          # are istio-proxy builds only).
          http_filters:
          # pilot/pkg/networking/core/extension/wasmplugin.go toEnvoyHTTPFilter:
          # the plugin arrives by ECDS, and initial_fetch_timeout 0 holds the
          # listener until it is loaded. istiod uses ADS; a file here. The
          # RBAC type is accepted too: the agent's fallback when the module
          # cannot be fetched.
          - name: {resource_name}
            config_discovery:
              config_source:
                path_config_source: {{ path: {ecds_path} }}
                resource_api_version: V3
                initial_fetch_timeout: 0s
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              - type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
          - name: envoy.filters.http.grpc_stats
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
              emit_filter_state: true
              stats_for_all_methods: false
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{stable}{canary}{analyzer}"#,
        node_id = quote(NODE_ID),
        admin_port = params.admin_port,
        listener_port = params.listener_port,
        route_header = quote(&params.route_header),
        early_header_mutation = match guard {
            ClientHeaderGuard::Present => format!(
                r#"          # istiod generates no early header mutation; this one is the
          # EnvoyFilter canary-split-strip-client-route-header
          # (envoy-config/istio/base/envoyfilter.yaml) merged into the HCM:
          # the client's route header is gone before the route is picked,
          # so a missing filter (failed pull under FAIL_OPEN) means stable.
          early_header_mutation_extensions:
          - name: canary-split.strip-client-route-header
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: {route_header}
"#,
                route_header = quote(&params.route_header)
            ),
            ClientHeaderGuard::Absent => String::new(),
        },
        canary_route = route(&canary_cluster()),
        stable_route = route(&stable_cluster()),
        resource_name = quote(&filter_resource_name()),
        ecds_path = quote(&ecds_path.display().to_string()),
        stable = cluster(&stable_cluster(), params.stable),
        canary = cluster(&canary_cluster(), params.canary),
        analyzer = cluster(&analyzer_cluster(), params.analyzer),
    )
}

/// The value of the admin `/stats` counter `cluster.<cluster>.<stat>`.
/// Envoy keeps `|` in stat names, so Istio's cluster names appear verbatim
/// (`cluster.outbound|8080|canary|payment-service....upstream_rq_total`).
pub fn cluster_stat(stats_text: &str, cluster: &str, stat: &str) -> Option<u64> {
    let name = format!("cluster.{cluster}.{stat}");
    stats_text.lines().find_map(|line| line.strip_prefix(name.as_str())?.strip_prefix(": ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn params() -> BootstrapParams {
        BootstrapParams {
            node_id: "ignored".to_owned(),
            listener_port: 0,
            admin_port: 0,
            stable: SocketAddr::from(([127, 0, 0, 1], 8081)),
            canary: SocketAddr::from(([127, 0, 0, 1], 8082)),
            analyzer: SocketAddr::from(([127, 0, 0, 1], 9190)),
            filter_configuration: plugin_config("token").to_string(),
            filter_wasm: PathBuf::from("/var/lib/istio/data/abc/module.wasm"),
            route_header: "x-canary-version".to_owned(),
        }
    }

    #[test]
    fn cluster_names_follow_build_subset_key() {
        assert_eq!(stable_cluster(), "outbound|8080|stable|payment-service.payments.svc.cluster.local");
        assert_eq!(canary_cluster(), "outbound|8080|canary|payment-service.payments.svc.cluster.local");
        assert_eq!(analyzer_cluster(), "outbound|9190||canary-analyzer.payments.svc.cluster.local");
        assert_eq!(filter_resource_name(), "extensions.istio.io/wasmplugin/payments.canary-split");
    }

    #[test]
    fn the_plugin_config_matches_the_wasmplugin_manifest() {
        // The manifest's analyzer cluster and route header must be what the
        // tests exercise; the token and interval are the stack's own.
        let manifest = include_str!("../../envoy-config/istio/base/wasmplugin.yaml");
        let config = plugin_config("token");
        for key in ["analyzer_cluster", "route_header"] {
            let value = config[key].as_str().unwrap();
            assert!(manifest.contains(value), "wasmplugin.yaml does not set {key} = {value}");
        }
        assert!(manifest.contains(&format!("pluginName: {PLUGIN_NAME}")));
        assert!(manifest.contains(&format!("name: {WASM_PLUGIN_NAME}")));
    }

    #[test]
    fn ecds_carries_the_plugin_config_as_json_in_a_string_value() {
        let ecds = render_ecds(&params(), ConfigEncoding::StringValue);
        let parsed: Value = serde_norway::from_str(&ecds).unwrap();
        let config = &parsed["resources"][0]["typed_config"]["config"];
        assert_eq!(config["configuration"]["@type"], "type.googleapis.com/google.protobuf.StringValue");
        let json_text = config["configuration"]["value"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(json_text).unwrap(), plugin_config("token"));
        assert_eq!(config["root_id"], PLUGIN_NAME);
        assert_eq!(config["name"], "payments.canary-split");
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert!(config["vm_config"].get("vm_id").is_none(), "istiod sets no vm_id");
        assert_eq!(config["vm_config"]["environment_variables"]["key_values"][RESOURCE_VERSION_ENV], RESOURCE_VERSION);
        assert_eq!(parsed["resources"][0]["name"], filter_resource_name());

        let ecds = render_ecds(&params(), ConfigEncoding::Struct);
        let parsed: Value = serde_norway::from_str(&ecds).unwrap();
        let configuration = &parsed["resources"][0]["typed_config"]["config"]["configuration"];
        assert_eq!(configuration["@type"], "type.googleapis.com/google.protobuf.Struct");
        assert_eq!(configuration["value"], plugin_config("token"));
    }

    #[test]
    fn the_bootstrap_strips_the_route_header_like_the_envoy_filter() {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap: Value = serde_norway::from_str(&render_istio_bootstrap(&params(), dir.path()).unwrap()).unwrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let mutation = &hcm["early_header_mutation_extensions"][0];
        let manifest: Value =
            serde_norway::from_str(include_str!("../../envoy-config/istio/base/envoyfilter.yaml")).unwrap();
        for patch in manifest["spec"]["configPatches"].as_array().unwrap() {
            let patched = &patch["patch"]["value"]["typed_config"]["early_header_mutation_extensions"][0];
            assert_eq!(patched, mutation, "the bootstrap's mutation is the EnvoyFilter's");
        }
        assert_eq!(mutation["typed_config"]["mutations"][0]["remove"], "x-canary-version");

        let ecds: Value = serde_norway::from_str(&render_ecds_pull_failed()).unwrap();
        let resource = &ecds["resources"][0];
        assert_eq!(resource["name"], filter_resource_name());
        assert_eq!(resource["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC");
        assert!(resource["typed_config"].get("rules").is_none(), "no rules: allow all");
    }

    #[test]
    fn cluster_stats_are_found_by_istio_names() {
        let text = "cluster.outbound|8080|canary|payment-service.payments.svc.cluster.local.upstream_rq_total: 17\n\
                    cluster.outbound|8080|stable|payment-service.payments.svc.cluster.local.upstream_rq_total: 83\n";
        assert_eq!(cluster_stat(text, &canary_cluster(), "upstream_rq_total"), Some(17));
        assert_eq!(cluster_stat(text, &stable_cluster(), "upstream_rq_total"), Some(83));
        assert_eq!(cluster_stat(text, &analyzer_cluster(), "upstream_rq_total"), None);
    }
}
