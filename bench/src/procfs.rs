//! What the benchmarks read from `/proc`, and pinning through `taskset`,
//! shared by `overhead`, `scale` and `footprint`.
//!
//! The workspace forbids `unsafe`, and neither the standard library nor a
//! small safe crate sets a thread's CPU affinity, so pinning goes through
//! util-linux's `taskset -a -p -c`, which moves every existing thread of a
//! process; threads created later inherit the mask from their creator.

use std::process::Command;

use anyhow::{Context as _, ensure};

/// Moves every thread of `pid` to `cpus` (a `taskset -c` list, e.g. `1` or
/// `0-1`).
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let output = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    ensure!(
        output.status.success(),
        "taskset -a -p -c {cpus} {pid} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// `Cpus_allowed_list` of `/proc/PID/status` (`0-1`), as `taskset -c`
/// takes it.
pub fn allowed_cpus(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "Cpus_allowed_list").map(str::to_owned)
}

/// The CPUs of a list like `0-2,4`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if last < first || last - first > 4_096 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The value of `Name:\tvalue` in a `/proc` status-like file (`status`,
/// `io`).
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// A `Name:   1234 kB` field of `/proc/PID/status`, in KiB; `None` when the
/// field is missing or not in kB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status_field(status, name)?.strip_suffix("kB")?.trim().parse().ok()
}

/// Fields 1 and 2 of `/proc/.../schedstat`: nanoseconds on CPU and waiting
/// on a run queue (runnable but not running).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(|field| field.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3\n"), Some(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tenvoy\nVmHWM:\t  101000 kB\nVmRSS:\t   98500 kB\nThreads:\t8\nCpus_allowed_list:\t0-1\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(98_500));
        assert_eq!(status_kib(status, "VmHWM"), Some(101_000));
        assert_eq!(status_kib(status, "Threads"), None, "not in kB");
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_field(status, "Cpus_allowed_list"), Some("0-1"));
        assert_eq!(status_field("write_bytes: 4096\n", "write_bytes"), Some("4096"));
    }

    #[test]
    fn schedstat_lines() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some((123_456_789, 2_000)));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("12"), None);
    }
}
