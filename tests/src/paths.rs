//! Where the artifacts under test live.
//!
//! `cargo xtask test` and `cargo xtask demo` build everything first and pass
//! absolute paths in environment variables. A bare `cargo test` falls back to
//! the paths those builds produce in this repository, and fails with a
//! message that says what to run when something is missing, rather than a
//! confusing "No such file or directory" from deep inside a test.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// Environment variable naming the Envoy 1.40 binary.
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";
/// Environment variable naming the filter's `.wasm` module.
pub const FILTER_WASM_ENV: &str = "CANARY_FILTER_WASM";
/// Environment variable naming the `canary-analyzer` binary.
pub const ANALYZER_BIN_ENV: &str = "CANARY_ANALYZER_BIN";
/// Environment variable naming the `demo-backend` binary.
pub const BACKEND_BIN_ENV: &str = "DEMO_BACKEND_BIN";
/// Environment variable naming the filter built with its test-only
/// `test-panic` feature (`cargo xtask build` makes it).
pub const FILTER_PANIC_WASM_ENV: &str = "CANARY_FILTER_PANIC_WASM";

/// The `test-panic` filter module: from the environment, else where
/// `cargo xtask build` puts it (its own target directory, so it never
/// replaces the real module). Fails, saying how to build it, when missing.
pub fn filter_panic_wasm() -> anyhow::Result<PathBuf> {
    let path = env_path(FILTER_PANIC_WASM_ENV)
        .unwrap_or_else(|| target_dir().join("filter-test-panic/wasm32-wasip1/release/canary_filter.wasm"));
    if !path.is_file() {
        bail!(
            "the test-panic filter build {} is missing (set {FILTER_PANIC_WASM_ENV} to override); build it with \
             `cargo xtask build`, or `cargo build -p canary-filter --target wasm32-wasip1 --release --features \
             test-panic --target-dir target/filter-test-panic`",
            path.display()
        );
    }
    Ok(path)
}

/// The four artifacts a stack runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub envoy: PathBuf,
    pub filter_wasm: PathBuf,
    pub analyzer: PathBuf,
    pub backend: PathBuf,
}

impl Binaries {
    /// Paths from the environment, else this repository's build outputs.
    ///
    /// The returned paths are not checked; call [`Binaries::check`] before
    /// starting anything so a missing build is reported once and clearly.
    pub fn from_env() -> Self {
        let target_dir = target_dir();
        Self {
            envoy: env_path(ENVOY_BIN_ENV).unwrap_or_else(|| repo_root().join(".cache/envoy-1.40.0/envoy")),
            filter_wasm: env_path(FILTER_WASM_ENV)
                .unwrap_or_else(|| target_dir.join("wasm32-wasip1/release/canary_filter.wasm")),
            analyzer: env_path(ANALYZER_BIN_ENV).unwrap_or_else(|| host_binary("canary-analyzer")),
            backend: env_path(BACKEND_BIN_ENV).unwrap_or_else(|| host_binary("demo-backend")),
        }
    }

    /// Like [`Binaries::from_env`], but with the backend Cargo just built for
    /// this test binary (`env!("CARGO_BIN_EXE_demo-backend")`) unless the
    /// environment says otherwise, so `cargo test` never runs a stale one.
    pub fn from_env_with_backend(cargo_built_backend: &str) -> Self {
        let mut binaries = Self::from_env();
        if env_path(BACKEND_BIN_ENV).is_none() {
            binaries.backend = PathBuf::from(cargo_built_backend);
        }
        binaries
    }

    /// Fails, naming every missing artifact and how to build it.
    pub fn check(&self) -> anyhow::Result<()> {
        let missing: Vec<String> = [
            (&self.envoy, ENVOY_BIN_ENV, "the Envoy 1.40 binary (`cargo xtask install` extracts it)"),
            (
                &self.filter_wasm,
                FILTER_WASM_ENV,
                "the filter (`cargo build -p canary-filter --target wasm32-wasip1 --release`)",
            ),
            (&self.analyzer, ANALYZER_BIN_ENV, "the analyzer (`cargo build -p canary-analyzer`)"),
            (&self.backend, BACKEND_BIN_ENV, "the demo backend (`cargo build -p canary-tests --bins`)"),
        ]
        .into_iter()
        .filter(|(path, _, _)| !path.is_file())
        .map(|(path, env, what)| format!("  {what}: {} not found (set {env} to override)", path.display()))
        .collect();
        if !missing.is_empty() {
            bail!(
                "missing build artifacts; run `cargo xtask test` (or `cargo xtask demo`), which builds and \
                 passes them all:\n{}",
                missing.join("\n")
            );
        }
        Ok(())
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    env_path("CARGO_TARGET_DIR").unwrap_or_else(|| repo_root().join("target"))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from)
}

/// A host binary of this workspace: next to the running executable when it
/// is there (a demo built in release finds its release siblings), else in
/// `target/debug`.
fn host_binary(name: &str) -> PathBuf {
    if let Ok(current_exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps, binaries one level up.
        for dir in current_exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    target_dir().join("debug").join(name)
}
