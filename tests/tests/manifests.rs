//! The Istio/Kubernetes packaging (`envoy-config/istio/`): every overlay is
//! rendered with `kubectl kustomize`, its Kubernetes objects are checked
//! against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), its
//! Istio objects against Istio's CRD schemas (`@kubernetes-models/istio`),
//! and what the project's own programs will read is fed to their own
//! parsers: the WasmPlugin's `pluginConfig` to the filter's, the analyzer's
//! TOML (with the Deployment's flags and token variables) to the
//! analyzer's, the rollout spec to the rollout parser.
//!
//! Every failure names the overlay, the object (`Kind/name`) and the field.
//! The tools come from `cargo xtask install` (`.cache/k8s-tools/`, or
//! `$CANARY_K8S_TOOLS`).

use std::path::{Path, PathBuf};
use std::process::Command;

use canary_analyzer::config::{Cli, Config, EnvTokens, FileConfig, ReadAccess};
use canary_analyzer::rollout::spec::{PauseWait, RolloutSpec, Step};
use canary_filter::config::FilterConfig;
use serde::Deserialize;
use serde_json::Value;

const OVERLAYS: [&str; 3] = ["dev", "staging", "production"];
/// The oldest Kubernetes the manifests promise to work on.
const KUBERNETES_VERSION: &str = "1.33";
const THIRTY_MINUTES_MS: u64 = 30 * 60 * 1_000;

#[test]
fn every_overlay_passes_the_schemas_and_the_projects_own_parsers() {
    let tools = Tools::find();
    let work = tempfile::tempdir().expect("tempdir");
    let mut problems = Vec::new();
    let mut rendered_files = Vec::new();
    for overlay in OVERLAYS {
        let (text, objects) = tools.render(overlay);
        assert!(objects.len() >= 8, "{overlay}: only {} objects rendered", objects.len());
        let yaml = work.path().join(format!("{overlay}.yaml"));
        let json = work.path().join(format!("{overlay}.json"));
        std::fs::write(&yaml, text).expect("write rendered yaml");
        std::fs::write(&json, serde_json::to_vec(&objects).expect("json")).expect("write rendered json");
        rendered_files.push((overlay, yaml, json));
        problems.extend(check_overlay(overlay, &objects));
        problems.extend(check_client_header_guard(overlay, &objects));
        problems.extend(check_released_service(overlay, &objects));
    }
    problems.extend(tools.validate_kubernetes(&rendered_files));
    problems.extend(tools.validate_istio(&rendered_files));
    assert!(problems.is_empty(), "envoy-config/istio/ has {} problems:\n{}", problems.len(), problems.join("\n"));
}

/// The validators must point at the culprit, not just fail: feed them one
/// broken object each and read what they say.
#[test]
fn validators_name_the_overlay_the_object_and_the_field() {
    let tools = Tools::find();
    let work = tempfile::tempdir().expect("tempdir");
    let broken = serde_json::json!([
        {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "canary-split"},
         "spec": {"url": "oci://r/canary-filter:1", "phase": "ROUTING", "sha256": "abc"}},
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
         "metadata": {"name": "canary-split-strip-client-route-header"},
         "spec": {"configPatches": [{"applyTo": "NETWORK_FILTER", "match": {"context": "OUTBOUND"}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "canary-analyzer"},
         "spec": {"ports": [{"port": "http"}]}},
    ]);
    let json = work.path().join("broken.json");
    let yaml = work.path().join("broken.yaml");
    std::fs::write(&json, serde_json::to_vec(&broken).expect("json")).expect("write");
    std::fs::write(&yaml, serde_norway::to_string(&broken[2]).expect("yaml")).expect("write");
    let files = [("broken-overlay", yaml, json)];
    let istio = tools.validate_istio(&files);
    assert!(istio.iter().any(|line| line.starts_with("broken-overlay: WasmPlugin/canary-split: spec.phase: ")));
    assert!(istio.iter().any(|line| line.starts_with("broken-overlay: WasmPlugin/canary-split: spec.sha256: ")));
    let envoy_filter =
        "broken-overlay: EnvoyFilter/canary-split-strip-client-route-header: spec.configPatches.0.match.context: ";
    assert!(istio.iter().any(|line| line.starts_with(envoy_filter)), "{istio:?}");
    let kubernetes = tools.validate_kubernetes(&files);
    assert!(
        kubernetes.iter().any(|line| line.starts_with("broken-overlay: Service/canary-analyzer: spec.ports.0.port: ")),
        "{kubernetes:?}"
    );
}

/// The semantic checks of one rendered overlay; each problem is a line
/// `overlay: Kind/name: field: what`.
fn check_overlay(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut report = |object: &str, field: &str, message: String| {
        problems.push(format!("{overlay}: {object}: {field}: {message}"));
    };
    let find = |kind: &str, name: &str| {
        objects.iter().find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    };
    let named = |kind: &str, prefix: &str| {
        objects.iter().find(|object| {
            object["kind"] == kind && object["metadata"]["name"].as_str().is_some_and(|name| name.starts_with(prefix))
        })
    };
    let (Some(plugin), Some(service), Some(deployment), Some(virtual_service), Some(destination_rule)) = (
        find("WasmPlugin", "canary-split"),
        find("Service", "canary-analyzer"),
        find("Deployment", "canary-analyzer"),
        find("VirtualService", "payment-service"),
        find("DestinationRule", "payment-service"),
    ) else {
        report("(overlay)", "resources", "lacks one of WasmPlugin/canary-split, Service/canary-analyzer, Deployment/canary-analyzer, VirtualService/payment-service, DestinationRule/payment-service".into());
        return problems;
    };

    // WasmPlugin: the filter must accept pluginConfig exactly as written,
    // and its analyzer cluster must be Istio's name for the Service.
    let at = "WasmPlugin/canary-split";
    let spec = &plugin["spec"];
    let plugin_config = serde_json::to_vec(&spec["pluginConfig"]).expect("json");
    match FilterConfig::parse(&plugin_config) {
        Err(error) => report(at, "spec.pluginConfig", format!("the filter refuses it: {error}")),
        Ok(filter) => {
            let namespace = service["metadata"]["namespace"].as_str().unwrap_or("default");
            let port = &service["spec"]["ports"][0]["port"];
            let cluster = format!("outbound|{port}||canary-analyzer.{namespace}.svc.cluster.local");
            if filter.analyzer_cluster != cluster {
                report(
                    at,
                    "spec.pluginConfig.analyzer_cluster",
                    format!("is {:?}, Istio names the analyzer's cluster {cluster:?}", filter.analyzer_cluster),
                );
            }
            let header = &virtual_service["spec"]["http"][0]["match"][0]["headers"];
            if header.get(&filter.route_header).is_none() {
                report(
                    at,
                    "spec.pluginConfig.route_header",
                    format!("{:?} is not the header VirtualService/payment-service routes on", filter.route_header),
                );
            }
            if filter.analyzer_token.is_empty() {
                report(
                    at,
                    "spec.pluginConfig.analyzer_token",
                    "is empty, but the analyzer requires a filter token".into(),
                );
            }
        }
    }
    // The overlays inherit url and sha256 from the base, the one file
    // `cargo xtask oci --update-manifests` rewrites and the xtask check
    // compares with the image built from this tree.
    for field in ["url", "sha256"] {
        let base = &base_wasmplugin()["spec"][field];
        if spec[field] != *base {
            report(
                at,
                &format!("spec.{field}"),
                format!("is {}, the base pins {base}: overlays must not pin another build", spec[field]),
            );
        }
    }
    let sha256 = spec["sha256"].as_str().unwrap_or("");
    if sha256.len() != 64 || !sha256.bytes().all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase()) {
        report(at, "spec.sha256", format!("{sha256:?} is not a lowercase 64-hex sha256"));
    }
    if !spec["url"].as_str().is_some_and(|url| url.starts_with("oci://")) {
        report(at, "spec.url", "must be an oci:// image".into());
    }
    for field in ["phase", "priority", "failStrategy", "selector", "match"] {
        if spec[field].is_null() {
            report(at, &format!("spec.{field}"), "must be set explicitly".into());
        }
    }
    if spec["match"][0]["mode"] != "CLIENT" {
        report(at, "spec.match[0].mode", "must be CLIENT: the split runs where routing is decided".into());
    }

    // Routing: the header goes to canary, the default to stable, and the
    // subsets exist by the version label.
    let routes = &virtual_service["spec"]["http"];
    let at = "VirtualService/payment-service";
    if routes[0]["match"][0]["headers"]["x-canary-version"]["exact"] != "canary"
        || routes[0]["route"][0]["destination"]["subset"] != "canary"
    {
        report(at, "spec.http[0]", "must route x-canary-version: canary to subset canary".into());
    }
    let last = routes.as_array().and_then(|routes| routes.last()).cloned().unwrap_or_default();
    if !last["match"].is_null() || last["route"][0]["destination"]["subset"] != "stable" {
        report(at, "spec.http[-1]", "the default route must go to subset stable".into());
    }
    for (position, version) in ["stable", "canary"].into_iter().enumerate() {
        let subset = &destination_rule["spec"]["subsets"][position];
        if subset["name"] != version || subset["labels"]["version"] != version {
            report(
                "DestinationRule/payment-service",
                &format!("spec.subsets[{position}]"),
                format!("must be {version} by label version={version}"),
            );
        }
    }

    // The analyzer: one writer, hardened, tokens from the Secret, and its
    // configuration accepted by the analyzer itself.
    let at = "Deployment/canary-analyzer";
    if deployment["spec"]["replicas"] != 1 {
        report(at, "spec.replicas", "must be 1: the analyzer is the single writer of its state".into());
    }
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let flag = |name: &str| args.iter().find_map(|arg| arg.strip_prefix(&format!("--{name}="))).map(str::to_owned);
    for (variable, key) in [("CANARY_SRE_TOKEN", "sre-token"), ("CANARY_FILTER_TOKEN", "filter-token")] {
        let from_secret = container["env"].as_array().into_iter().flatten().any(|env| {
            env["name"] == variable
                && env["valueFrom"]["secretKeyRef"]["name"] == "canary-analyzer-tokens"
                && env["valueFrom"]["secretKeyRef"]["key"] == key
        });
        if !from_secret {
            report(
                at,
                "spec.template.spec.containers[0].env",
                format!("{variable} must come from Secret canary-analyzer-tokens key {key}"),
            );
        }
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if container[probe]["httpGet"]["path"] != "/healthz" {
            report(at, &format!("spec.template.spec.containers[0].{probe}"), "must GET /healthz".into());
        }
    }
    for (field, value) in [
        ("securityContext.readOnlyRootFilesystem", &container["securityContext"]["readOnlyRootFilesystem"]),
        ("securityContext.runAsNonRoot (pod)", &pod["securityContext"]["runAsNonRoot"]),
    ] {
        if *value != true {
            report(at, field, "must be true".into());
        }
    }
    if container["resources"]["requests"].is_null() || container["resources"]["limits"].is_null() {
        report(at, "spec.template.spec.containers[0].resources", "needs requests and limits".into());
    }
    let state_dir = flag("state-dir").unwrap_or_default();
    let mounted = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|mount| mount["mountPath"] == state_dir.as_str());
    let state_volume = mounted.and_then(|mount| {
        pod["volumes"].as_array().into_iter().flatten().find(|volume| volume["name"] == mount["name"])
    });
    match state_volume {
        Some(volume) if !volume["emptyDir"].is_null() => {}
        Some(volume) => match volume["persistentVolumeClaim"]["claimName"].as_str() {
            Some(claim) if find("PersistentVolumeClaim", claim).is_some() => {}
            _ => report(
                at,
                "spec.template.spec.volumes",
                format!("the state volume's claim is not in the overlay: {volume}"),
            ),
        },
        None => report(
            at,
            "spec.template.spec.containers[0].volumeMounts",
            format!("nothing is mounted at --state-dir={state_dir:?}"),
        ),
    }
    match named("ConfigMap", "canary-analyzer-config").and_then(|map| map["data"]["analyzer.toml"].as_str()) {
        None => report("ConfigMap/canary-analyzer-config", "data.analyzer.toml", "missing".into()),
        Some(text) => {
            let cli = Cli { listen: flag("listen"), state_dir: flag("state-dir").map(PathBuf::from), config: None };
            let tokens = EnvTokens { filter: Some("filter-token".into()), sre: Some("sre-token".into()), read: None };
            match FileConfig::parse(Path::new("analyzer.toml"), text).and_then(|file| Config::merge(&cli, file, tokens))
            {
                Err(error) => report(
                    "ConfigMap/canary-analyzer-config",
                    "data.analyzer.toml",
                    format!("the analyzer refuses it: {error}"),
                ),
                Ok(config) if config.read_access != ReadAccess::Open => report(
                    "ConfigMap/canary-analyzer-config",
                    "data.analyzer.toml.read_access",
                    "must be \"open\": Prometheus scrapes /metrics without a token".into(),
                ),
                Ok(_) => {}
            }
        }
    }
    let policy = find("NetworkPolicy", "canary-analyzer");
    let admits_sre = policy.is_some_and(|policy| {
        policy["spec"]["ingress"][0]["from"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|peer| peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "sre")
    });
    if !admits_sre {
        report(
            "NetworkPolicy/canary-analyzer",
            "spec.ingress[0].from",
            "must exist and admit the sre namespace".into(),
        );
    }

    // The rollout spec: parsed by the analyzer, and each environment's pace.
    match named("ConfigMap", "canary-rollout").and_then(|map| map["data"]["rollout.yaml"].as_str()) {
        None => report("ConfigMap/canary-rollout", "data.rollout.yaml", "missing".into()),
        Some(text) => match RolloutSpec::parse_file_text("rollout.yaml", text) {
            Err(error) => {
                report("ConfigMap/canary-rollout", "data.rollout.yaml", format!("the analyzer refuses it: {error}"))
            }
            Ok(spec) => {
                for problem in pace_problems(overlay, &spec.steps) {
                    report("ConfigMap/canary-rollout", "data.rollout.yaml.steps", problem);
                }
            }
        },
    }
    problems
}

/// `envoy-config/istio/base/wasmplugin.yaml` as written.
fn base_wasmplugin() -> Value {
    let path = canary_tests::paths::repo_root().join("envoy-config/istio/base/wasmplugin.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The EnvoyFilter that removes a client-sent route header before routing,
/// so a missing filter (FAIL_OPEN) cannot let a client pick canary: it must
/// select the WasmPlugin's workloads, patch the caller sidecars' outbound
/// listener on the WasmPlugin's port and the gateways, and remove exactly
/// the header the filter writes and the VirtualService matches.
fn check_client_header_guard(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let at = "EnvoyFilter/canary-split-strip-client-route-header";
    let mut report = |field: &str, message: String| problems.push(format!("{overlay}: {at}: {field}: {message}"));
    let find = |kind: &str, name: &str| {
        objects.iter().find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    };
    let (Some(guard), Some(plugin)) =
        (find("EnvoyFilter", "canary-split-strip-client-route-header"), find("WasmPlugin", "canary-split"))
    else {
        report("(object)", "missing, or WasmPlugin/canary-split is".into());
        return problems;
    };
    let plugin = &plugin["spec"];
    let route_header = plugin["pluginConfig"]["route_header"].as_str().unwrap_or("x-canary-version");
    if guard["spec"]["workloadSelector"]["labels"] != plugin["selector"]["matchLabels"] {
        report("spec.workloadSelector.labels", "must equal the WasmPlugin's selector.matchLabels".into());
    }
    let patches = guard["spec"]["configPatches"].as_array().cloned().unwrap_or_default();
    for context in ["SIDECAR_OUTBOUND", "GATEWAY"] {
        let Some((index, patch)) = patches.iter().enumerate().find(|(_, patch)| patch["match"]["context"] == context)
        else {
            report("spec.configPatches", format!("no patch for context {context}"));
            continue;
        };
        let field = format!("spec.configPatches[{index}]");
        let listener = &patch["match"]["listener"];
        if patch["applyTo"] != "NETWORK_FILTER"
            || listener["filterChain"]["filter"]["name"] != "envoy.filters.network.http_connection_manager"
            || patch["patch"]["operation"] != "MERGE"
        {
            report(&field, "must MERGE into the http_connection_manager network filter".into());
        }
        if context == "SIDECAR_OUTBOUND" && listener["portNumber"] != plugin["match"][0]["ports"][0]["number"] {
            report(&format!("{field}.match.listener.portNumber"), "must be the WasmPlugin's match port".into());
        }
        let hcm = &patch["patch"]["value"]["typed_config"];
        let removed: Vec<String> = hcm["early_header_mutation_extensions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|extension| {
                extension["typed_config"]["@type"]
                    == "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
            })
            .flat_map(|extension| extension["typed_config"]["mutations"].as_array().cloned().unwrap_or_default())
            .filter_map(|mutation| mutation["remove"].as_str().map(str::to_owned))
            .collect();
        if removed != [route_header] {
            report(
                &format!("{field}.patch.value.typed_config.early_header_mutation_extensions"),
                format!("removes {removed:?}, must remove exactly pluginConfig.route_header {route_header:?}"),
            );
        }
    }
    problems
}

/// Each environment's pod counts of the service being released: (stable,
/// canary). The analyzer stays at one everywhere (check_overlay).
fn expected_replicas(overlay: &str) -> (u64, u64) {
    match overlay {
        "dev" => (1, 1),
        "staging" => (2, 1),
        "production" => (9, 1),
        other => panic!("no replica counts for overlay {other}"),
    }
}

/// The example service being released: one Deployment per DestinationRule
/// subset whose pods carry exactly that subset's labels, the environment's
/// replica counts, a real image, probes, resources and non-root, and a
/// Service on the WasmPlugin's port that selects both.
fn check_released_service(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut report = |object: &str, field: &str, message: String| {
        problems.push(format!("{overlay}: {object}: {field}: {message}"));
    };
    let find = |kind: &str, name: &str| {
        objects.iter().find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    };
    let (Some(service), Some(destination_rule), Some(plugin)) = (
        find("Service", "payment-service"),
        find("DestinationRule", "payment-service"),
        find("WasmPlugin", "canary-split"),
    ) else {
        report(
            "(overlay)",
            "resources",
            "lacks Service/payment-service, DestinationRule/payment-service or WasmPlugin/canary-split".into(),
        );
        return problems;
    };
    let selector = service["spec"]["selector"].as_object().cloned().unwrap_or_default();
    let port = &plugin["spec"]["match"][0]["ports"][0]["number"];
    if !service["spec"]["ports"].as_array().into_iter().flatten().any(|service_port| service_port["port"] == *port) {
        report("Service/payment-service", "spec.ports", format!("has no port {port}, the WasmPlugin's match port"));
    }
    let (stable_replicas, canary_replicas) = expected_replicas(overlay);
    for (subset, replicas) in [("stable", stable_replicas), ("canary", canary_replicas)] {
        let name = format!("payment-service-{subset}");
        let at = format!("Deployment/{name}");
        let Some(deployment) = find("Deployment", &name) else {
            report(&at, "(object)", "missing".into());
            continue;
        };
        if deployment["spec"]["replicas"] != replicas {
            report(&at, "spec.replicas", format!("is {}, {overlay} runs {replicas}", deployment["spec"]["replicas"]));
        }
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let subset_labels = destination_rule["spec"]["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|candidate| candidate["name"] == subset)
            .map(|candidate| candidate["labels"].as_object().cloned().unwrap_or_default());
        match subset_labels {
            None => report("DestinationRule/payment-service", "spec.subsets", format!("has no subset {subset}")),
            Some(labels) => {
                let wanted = labels
                    .iter()
                    .map(|label| (label, "DestinationRule subset"))
                    .chain(selector.iter().map(|label| (label, "Service selector")));
                for ((key, value), source) in wanted {
                    if pod_labels[key] != *value {
                        report(
                            &at,
                            &format!("spec.template.metadata.labels.{key}"),
                            format!("is {}, must be {value} ({source}, for the {subset} pods)", pod_labels[key]),
                        );
                    }
                }
            }
        }
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        if !container["image"].as_str().is_some_and(|image| image.contains('/') && image.contains(':')) {
            report(
                &at,
                "spec.template.spec.containers[0].image",
                format!("{} is not set by `images:`", container["image"]),
            );
        }
        for probe in ["readinessProbe", "livenessProbe"] {
            if container[probe]["httpGet"].is_null() {
                report(&at, &format!("spec.template.spec.containers[0].{probe}"), "must be an httpGet probe".into());
            }
        }
        if container["resources"]["requests"].is_null() || container["resources"]["limits"].is_null() {
            report(&at, "spec.template.spec.containers[0].resources", "needs requests and limits".into());
        }
        if pod["securityContext"]["runAsNonRoot"] != true {
            report(&at, "spec.template.spec.securityContext.runAsNonRoot", "must be true".into());
        }
    }
    problems
}

/// dev holds for seconds; production holds 30 minutes per step and waits
/// for a person right before 100%.
fn pace_problems(overlay: &str, steps: &[Step]) -> Vec<String> {
    let durations: Vec<u64> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Pause { wait: PauseWait::Duration { duration_ms }, .. } => Some(*duration_ms),
            _ => None,
        })
        .collect();
    let gate_before_full = steps.windows(2).any(|pair| {
        matches!(pair, [Step::Pause { wait: PauseWait::UntilApproved, .. }, Step::SetWeight { weight_bp: 10_000 }])
    });
    let mut problems = Vec::new();
    match overlay {
        "dev" if durations.iter().any(|&ms| ms >= 60_000) => {
            problems.push(format!("dev holds must be seconds, got {durations:?} ms"))
        }
        "production" => {
            if durations.is_empty() || durations.iter().any(|&ms| ms != THIRTY_MINUTES_MS) {
                problems.push(format!("production holds must be 30 minutes each, got {durations:?} ms"));
            }
            if !gate_before_full {
                problems.push("production needs `pause: {untilApproved: true}` right before `setWeight: 100`".into());
            }
        }
        _ => {}
    }
    problems
}

/// The validators installed by `cargo xtask install`.
struct Tools {
    dir: PathBuf,
    manifests: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        let root = canary_tests::paths::repo_root();
        let dir = std::env::var_os("CANARY_K8S_TOOLS")
            .filter(|dir| !dir.is_empty())
            // Relative to the repository root, not the test's directory.
            .map(|dir| root.join(dir))
            .unwrap_or_else(|| root.join(".cache/k8s-tools"));
        assert!(
            dir.join("venv/bin/kubectl").is_file(),
            "{} has no kubectl: run `cargo xtask install` (or `cargo xtask k8s-validate`), or set CANARY_K8S_TOOLS",
            dir.display()
        );
        Tools { dir, manifests: root.join("envoy-config/istio") }
    }

    /// `kubectl kustomize overlays/OVERLAY`: the YAML and its objects.
    fn render(&self, overlay: &str) -> (String, Vec<Value>) {
        let path = self.manifests.join("overlays").join(overlay);
        let text = run(Command::new(self.dir.join("venv/bin/kubectl")).arg("kustomize").arg(&path), overlay)
            .unwrap_or_else(|output| panic!("{overlay}: kubectl kustomize failed:\n{output}"));
        let objects = serde_norway::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).unwrap_or_else(|error| panic!("{overlay}: {error}")))
            .filter(|object| !object.is_null())
            .collect();
        (text, objects)
    }

    /// Kubernetes objects against the OpenAPI schemas; one line per error.
    fn validate_kubernetes(&self, files: &[(&str, PathBuf, PathBuf)]) -> Vec<String> {
        let mut command = Command::new(self.dir.join("venv/bin/python"));
        command.arg(self.manifests.join("tools/validate-k8s.py")).arg(KUBERNETES_VERSION);
        command.args(files.iter().map(|(overlay, yaml, _)| format!("{overlay}={}", yaml.display())));
        findings(&mut command)
    }

    /// Istio objects against Istio's CRD schemas; one line per error.
    fn validate_istio(&self, files: &[(&str, PathBuf, PathBuf)]) -> Vec<String> {
        let mut command = Command::new(self.dir.join("bin/node"));
        command.arg(self.manifests.join("tools/validate-istio.mjs")).arg(self.dir.join("node/node_modules"));
        command.args(files.iter().map(|(overlay, _, json)| format!("{overlay}={}", json.display())));
        findings(&mut command)
    }
}

/// A validator's stdout lines; exit 1 means "found problems", anything
/// else non-zero is a broken tool.
fn findings(command: &mut Command) -> Vec<String> {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    match output.status.code() {
        Some(0) if lines.is_empty() => lines,
        Some(1) if !lines.is_empty() => lines,
        _ => panic!("{command:?} failed ({}):\n{}\n{stderr}", output.status, lines.join("\n")),
    }
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|error| format!("{what}: cannot run {command:?}: {error}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
