//! The process side of `scale`: the analyzer as a pinned child, and what
//! `/proc` says about a process (CPU time per thread, resident memory, bytes
//! written), plus the limits and pinning of the benchmark itself.
//!
//! CPU time comes from `/proc/PID/task/*/schedstat` (nanoseconds on CPU,
//! per thread), not `/proc/PID/stat` (10 ms ticks): a one-second window at
//! low load would otherwise be mostly rounding.
//!
//! The workspace forbids `unsafe`, and neither the standard library nor a
//! small safe crate sets a thread's CPU affinity, so pinning goes through
//! util-linux's `taskset`: `taskset -c 0 canary-analyzer …` for the child
//! (taskset execs it, so the pid is the analyzer's) and `taskset -a -p -c 1
//! <own pid>` for this process, which moves every thread that exists and,
//! through inheritance, every thread created later (tokio's blocking pool,
//! the driver's runtime).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canary_tests::process::ChildProcess;
use serde::Serialize;

use crate::procfs::{self, parse_schedstat, status_field, status_kib};

/// The analyzer's periodic state snapshot (group commits append to a journal).
pub const STATE_FILE_NAME: &str = "state.json";

/// `RLIMIT_NOFILE` before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpenFilesLimit {
    pub soft_before: u64,
    pub hard_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises this process's open-files limit towards `needed`: the soft limit
/// up to the hard one, and past the hard one when the process may (with
/// `CAP_SYS_RESOURCE`, up to `fs.nr_open`). Children inherit the limit, so
/// the analyzer started afterwards can accept as many connections as the
/// driver opens. The result may be less than `needed`; the caller decides
/// what to do with fewer connections.
pub fn raise_open_files_limit(needed: u64) -> anyhow::Result<OpenFilesLimit> {
    use rlimit::Resource;
    let (soft_before, hard_before) = Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
    let mut limit = OpenFilesLimit { soft_before, hard_before, soft: soft_before, hard: hard_before };
    if soft_before >= needed {
        return Ok(limit);
    }
    if needed > hard_before && Resource::NOFILE.set(needed, needed).is_ok() {
        (limit.soft, limit.hard) = (needed, needed);
        return Ok(limit);
    }
    Resource::NOFILE.set(hard_before, hard_before).context("raising the soft RLIMIT_NOFILE to the hard limit")?;
    limit.soft = hard_before;
    Ok(limit)
}

/// Pins every thread of this process (and so every thread it creates later)
/// to `cpu`; see the module docs for why through `taskset`.
pub fn pin_this_process(cpu: usize) -> anyhow::Result<()> {
    procfs::pin(std::process::id(), &cpu.to_string()).context("pinning the benchmark")
}

/// CPUs this process may run on (e.g. `0-1`).
pub fn allowed_cpus() -> Option<String> {
    procfs::allowed_cpus(std::process::id())
}

/// A point-in-time reading of one process.
#[derive(Debug, Clone)]
pub struct ProcSample {
    pub at: Instant,
    /// By thread id: the thread's name, and nanoseconds on CPU and waiting
    /// on a run queue (runnable but not running).
    pub threads: BTreeMap<u32, ThreadTimes>,
    pub rss_bytes: Option<u64>,
    /// Peak resident set (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// `write_bytes` of `/proc/PID/io`: bytes this process caused to be sent
    /// to storage (journal, snapshots, weights file; sockets do not count).
    pub storage_write_bytes: Option<u64>,
}

impl ProcSample {
    /// Reads `/proc/<pid>`; threads that exit while being read are skipped.
    pub fn read(pid: u32) -> ProcSample {
        let at = Instant::now();
        let base = PathBuf::from(format!("/proc/{pid}"));
        let mut threads = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(base.join("task")) {
            for entry in entries.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                    continue;
                };
                let Some((cpu_ns, wait_ns)) =
                    std::fs::read_to_string(entry.path().join("schedstat")).ok().as_deref().and_then(parse_schedstat)
                else {
                    continue;
                };
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_owned();
                threads.insert(tid, ThreadTimes { name, cpu_ns, wait_ns });
            }
        }
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let kib = |field| status_kib(&status, field).map(|kib| kib * 1024);
        let io = std::fs::read_to_string(base.join("io")).unwrap_or_default();
        ProcSample {
            at,
            threads,
            rss_bytes: kib("VmRSS"),
            peak_rss_bytes: kib("VmHWM"),
            storage_write_bytes: status_field(&io, "write_bytes").and_then(|value| value.parse().ok()),
        }
    }

    pub fn cpu_ns(&self) -> u64 {
        self.threads.values().map(|times| times.cpu_ns).sum()
    }
}

/// One thread's counters from `/proc/.../schedstat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTimes {
    pub name: String,
    pub cpu_ns: u64,
    pub wait_ns: u64,
}

/// CPU used between two samples of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuDelta {
    pub wall_ms: f64,
    pub cpu_ms: f64,
    /// CPU time over wall time: 1.0 is one core busy all the time.
    pub utilisation: f64,
    /// Time the threads were runnable but waited for a CPU, summed over
    /// threads: behind another thread of the same process or another
    /// process. With utilisation well below 1.0 it is mostly the latter.
    pub run_queue_wait_ms: f64,
    /// The busiest threads over the interval, busiest first.
    pub top_threads: Vec<ThreadCpu>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub cpu_ms: f64,
}

/// How many threads [`CpuDelta`] lists.
const TOP_THREADS: usize = 6;

impl CpuDelta {
    pub fn between(before: &ProcSample, after: &ProcSample) -> CpuDelta {
        let wall_ms = after.at.saturating_duration_since(before.at).as_secs_f64() * 1_000.0;
        // A thread that started inside the interval counts from zero.
        let mut run_queue_wait_ns = 0;
        let mut threads: Vec<ThreadCpu> = after
            .threads
            .iter()
            .map(|(tid, times)| {
                let (cpu_before, wait_before) =
                    before.threads.get(tid).map_or((0, 0), |before| (before.cpu_ns, before.wait_ns));
                run_queue_wait_ns += times.wait_ns.saturating_sub(wait_before);
                ThreadCpu {
                    tid: *tid,
                    name: times.name.clone(),
                    cpu_ms: times.cpu_ns.saturating_sub(cpu_before) as f64 / 1e6,
                }
            })
            .collect();
        // Threads that exited inside the interval took their time with them;
        // sum what is left rather than subtract totals, which could go negative.
        let cpu_ms: f64 = threads.iter().map(|thread| thread.cpu_ms).sum();
        threads.sort_by(|a, b| b.cpu_ms.total_cmp(&a.cpu_ms));
        threads.truncate(TOP_THREADS);
        CpuDelta {
            wall_ms,
            cpu_ms,
            utilisation: if wall_ms > 0.0 { cpu_ms / wall_ms } else { 0.0 },
            run_queue_wait_ms: run_queue_wait_ns as f64 / 1e6,
            top_threads: threads,
        }
    }
}

/// A `canary-analyzer` started for one phase, with its own state directory.
#[derive(Debug)]
pub struct AnalyzerProcess {
    process: ChildProcess,
    pid: u32,
    address: SocketAddr,
    state_dir: PathBuf,
}

impl AnalyzerProcess {
    /// Starts the analyzer in `dir` (config, state and log go there), pinned
    /// to `cpu` when given, and waits until it answers `/healthz`.
    pub async fn start(binary: &Path, dir: &Path, token: &str, cpu: Option<usize>) -> anyhow::Result<Self> {
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let config_path = dir.join("analyzer.toml");
        // Debug formatting of a str is a valid TOML basic string for the
        // ASCII token and temporary paths used here.
        let config = format!(
            "# Written by canary-bench scale.\nfilter_token = {token:?}\nstate_dir = {:?}\n",
            state_dir.display().to_string()
        );
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .env_remove("CANARY_FILTER_TOKEN")
            .env_remove("CANARY_SRE_TOKEN")
            .env_remove("CANARY_READ_TOKEN");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut process = ChildProcess::spawn("canary-analyzer", command, &dir.join("analyzer.log"))?;
        let deadline = Instant::now() + canary_tests::patience();
        let address = process.wait_for_listening("canary-analyzer", deadline).await?;
        let pid = process.pid().context("the analyzer has no pid")?;
        // The announcement comes from the analyzer itself, so taskset has
        // exec'd it by now and the pid is the analyzer's.
        loop {
            match canary_tests::http::get(address, "/healthz").await {
                Ok(response) if response.status.is_success() => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(response) => bail!("analyzer /healthz answered {}: {}", response.status, response.text()),
                Err(error) => return Err(error).context(process.describe_log()),
            }
            process.fail_if_exited("while waiting for /healthz")?;
        }
        Ok(Self { process, pid, address, state_dir })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn sample(&self) -> ProcSample {
        ProcSample::read(self.pid)
    }

    /// Size of the state snapshot now: what each periodic snapshot writes.
    pub fn state_file_bytes(&self) -> Option<u64> {
        std::fs::metadata(self.state_dir.join(STATE_FILE_NAME)).ok().map(|metadata| metadata.len())
    }

    /// Fails with the log tail if the analyzer has died.
    pub fn fail_if_exited(&mut self, when: &str) -> anyhow::Result<()> {
        self.process.fail_if_exited(when)
    }

    /// SIGKILL and reap. Killing the server side first makes it, not the
    /// driver, hold the closed connections in TIME_WAIT, so the driver's
    /// source ports are free again for the next phase.
    pub fn kill(mut self) {
        self.process.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id());
        assert!(!sample.threads.is_empty(), "at least the test thread");
        assert!(sample.rss_bytes.is_some_and(|rss| rss > 0));
        assert!(sample.peak_rss_bytes >= sample.rss_bytes);
        // Burn a little CPU so the delta is visibly positive.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let later = ProcSample::read(std::process::id());
        let delta = CpuDelta::between(&sample, &later);
        assert!(delta.cpu_ms > 0.0 && delta.wall_ms > 0.0, "{delta:?}");
        assert!(delta.top_threads.len() <= TOP_THREADS);
    }
}
