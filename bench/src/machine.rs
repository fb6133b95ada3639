//! What a result was measured on: the machine, the artifacts under test and
//! the source revision. A number without this next to it cannot be compared
//! with anything.
//!
//! Everything here is best effort: a field that cannot be read is `null` in
//! the results rather than a reason to throw a benchmark run away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use canary_tests::Binaries;
use serde::Serialize;

/// The host, as far as it matters for timing.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    /// `model name` of the first processor in `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// `std::thread::available_parallelism`: cores this process may use
    /// (cgroup quotas included), not the cores the host has.
    pub cores_available: Option<usize>,
    /// `MemTotal` of `/proc/meminfo`.
    pub memory_total_mib: Option<u64>,
    pub kernel: Option<String>,
    /// The filesystem of the temporary directory, where the harness puts
    /// each stack and so the analyzer's state: the analyzer fsyncs every
    /// weights change there before pushing it.
    pub temp_dir_filesystem: Option<Filesystem>,
}

/// A mount, from `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub mount_point: String,
    pub source: String,
    pub fs_type: String,
}

impl Machine {
    pub fn describe() -> Self {
        Self {
            hostname: hostname(),
            cpu_model: read("/proc/cpuinfo").as_deref().and_then(parse_cpu_model),
            cores_available: std::thread::available_parallelism().ok().map(usize::from),
            memory_total_mib: read("/proc/meminfo").as_deref().and_then(parse_mem_total_kib).map(|kib| kib / 1024),
            kernel: read("/proc/sys/kernel/osrelease").map(|release| release.trim().to_owned()),
            temp_dir_filesystem: read("/proc/mounts").and_then(|mounts| {
                let temp_dir = std::fs::canonicalize(std::env::temp_dir()).ok()?;
                filesystem_of(&mounts, &temp_dir)
            }),
        }
    }
}

/// The binaries a stack runs, and the source revision they came from.
#[derive(Debug, Clone, Serialize)]
pub struct Artifacts {
    pub envoy: Artifact,
    /// What follows `version:` in `envoy --version`.
    pub envoy_version: Option<String>,
    pub analyzer: Artifact,
    /// `release` or `debug`, from the analyzer's path under Cargo's target
    /// directory; `unknown` for a binary elsewhere.
    pub analyzer_build_profile: &'static str,
    pub filter_wasm: Artifact,
    pub backend: Artifact,
    pub git_commit: Option<String>,
    /// Tracked files other than `bench/results/` differ from `git_commit`
    /// (the artifacts may too).
    pub git_dirty: Option<bool>,
}

/// One binary on disk; size and modification time tell two builds apart.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub path: PathBuf,
    pub size_bytes: Option<u64>,
    pub modified_unix_s: Option<u64>,
}

impl Artifacts {
    pub fn describe(binaries: &Binaries) -> Self {
        let repo_root = canary_tests::paths::repo_root();
        Self {
            envoy: Artifact::at(&binaries.envoy),
            envoy_version: command_output(Command::new(&binaries.envoy).arg("--version"))
                .as_deref()
                .and_then(parse_envoy_version),
            analyzer: Artifact::at(&binaries.analyzer),
            analyzer_build_profile: build_profile(&binaries.analyzer),
            filter_wasm: Artifact::at(&binaries.filter_wasm),
            backend: Artifact::at(&binaries.backend),
            git_commit: command_output(Command::new("git").arg("-C").arg(&repo_root).args(["rev-parse", "HEAD"]))
                .map(|commit| commit.trim().to_owned()),
            git_dirty: command_output(Command::new("git").arg("-C").arg(&repo_root).args([
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                // A run rewrites committed results; that is not a change to
                // what was measured.
                ":!bench/results",
            ]))
            .map(|status| !status.trim().is_empty()),
        }
    }
}

impl Artifact {
    pub fn at(path: &Path) -> Self {
        let metadata = std::fs::metadata(path).ok();
        Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            size_bytes: metadata.as_ref().map(|metadata| metadata.len()),
            modified_unix_s: metadata
                .and_then(|metadata| metadata.modified().ok())
                .and_then(|modified| modified.duration_since(UNIX_EPOCH).ok())
                .map(|age| age.as_secs()),
        }
    }
}

/// `/etc/hostname`, or `unknown-host`.
pub fn hostname() -> String {
    read("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// The 1, 5 and 15 minute load averages. Recorded around every measured
/// phase: on a small machine another busy process explains outliers better
/// than anything in the product.
pub fn load_average() -> Option<[f64; 3]> {
    read("/proc/loadavg").as_deref().and_then(parse_load_average)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn command_output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(|field| field.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// The mount whose mount point is the longest prefix of `path`.
fn filesystem_of(mounts: &str, path: &Path) -> Option<Filesystem> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point).then(|| Filesystem {
                mount_point: mount_point.to_owned(),
                source: source.to_owned(),
                fs_type: fs_type.to_owned(),
            })
        })
        // Later mounts over the same point hide earlier ones, so the last of
        // the longest wins.
        .max_by_key(|filesystem| filesystem.mount_point.len())
}

fn parse_envoy_version(output: &str) -> Option<String> {
    // Envoy prints its own path first: `<argv[0]>  version: <sha>/1.40.0/...`.
    let (_, version) = output.split_once("version:")?;
    version.lines().next().map(|version| version.trim().to_owned()).filter(|version| !version.is_empty())
}

/// Cargo puts a profile's binaries in `<target>/<profile>/`, so the last
/// `release` or `debug` component of the path names the profile.
fn build_profile(path: &Path) -> &'static str {
    path.components()
        .rev()
        .skip(1)
        .find_map(|component| match component.as_os_str().to_str() {
            Some("release") => Some("release"),
            Some("debug") => Some("debug"),
            _ => None,
        })
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\
                       processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(parse_cpu_model(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(parse_cpu_model("processor : 0\n"), None);

        let meminfo = "MemTotal:        8141196 kB\nMemFree:         1000000 kB\n";
        assert_eq!(parse_mem_total_kib(meminfo), Some(8_141_196));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);

        assert_eq!(parse_load_average("3.22 3.93 3.54 5/120 24277\n"), Some([3.22, 3.93, 3.54]));
        assert_eq!(parse_load_average("3.22\n"), None);
    }

    #[test]
    fn finds_the_filesystem_of_a_path() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n\
                      /dev/vdb /tmpfoo ext4 rw 0 0\n";
        let of = |path: &str| filesystem_of(mounts, Path::new(path)).map(|filesystem| filesystem.fs_type);
        assert_eq!(of("/tmp/canary-stack-x").as_deref(), Some("tmpfs"));
        assert_eq!(of("/tmpx").as_deref(), Some("ext4"));
        assert_eq!(of("/work/main").as_deref(), Some("ext4"));
        assert_eq!(filesystem_of("", Path::new("/tmp")), None);
    }

    #[test]
    fn parses_envoy_version() {
        let output = "\n/opt/envoy/bin/envoy  version: 0123abcd/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(parse_envoy_version(output).as_deref(), Some("0123abcd/1.40.0/Clean/RELEASE/BoringSSL"));
        assert_eq!(parse_envoy_version("envoy: unknown flag\n"), None);
    }

    #[test]
    fn build_profile_comes_from_the_target_directory() {
        let table = [
            ("/work/main/target/release/canary-analyzer", "release"),
            ("/work/main/target/debug/canary-analyzer", "debug"),
            ("target/x86_64-unknown-linux-gnu/release/canary-analyzer", "release"),
            ("/usr/local/bin/canary-analyzer", "unknown"),
            // The file name itself is not a directory of the target tree.
            ("/opt/release", "unknown"),
        ];
        for (path, expected) in table {
            assert_eq!(build_profile(Path::new(path)), expected, "{path}");
        }
    }
}
