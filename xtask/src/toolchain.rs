//! The pinned toolchain from `rust-toolchain.toml`.
//!
//! rustup installs the toolchain on the first `cargo` call, but an already
//! installed toolchain does not get the file's `targets` added, so xtask
//! checks them itself. The file stays the single source of truth for the
//! channel and the targets.

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub channel: String,
    pub targets: Vec<String>,
}

/// Parses the `[toolchain]` table's `channel` and (single-line) `targets`.
pub fn parse(file: &str) -> Result<Toolchain> {
    let mut channel = None;
    let mut targets = Vec::new();
    for line in file.lines().map(|line| line.split('#').next().unwrap_or("").trim()) {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key.trim() {
            "channel" => channel = Some(value.trim().trim_matches('"').to_owned()),
            "targets" => {
                let Some(list) = value.trim().strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) else {
                    bail!("rust-toolchain.toml: `targets` must be a one-line array, got `{}`", value.trim());
                };
                targets = list
                    .split(',')
                    .map(|item| item.trim().trim_matches('"'))
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            _ => {}
        }
    }
    let Some(channel) = channel.filter(|channel| !channel.is_empty()) else {
        bail!("rust-toolchain.toml: no `channel`");
    };
    Ok(Toolchain { channel, targets })
}

/// The targets the toolchain file asks for that `rustup target list
/// --installed` (one target per line) does not show.
pub fn missing_targets<'a>(wanted: &'a [String], installed_list: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = installed_list.lines().map(str::trim).collect();
    wanted.iter().map(String::as_str).filter(|target| !installed.contains(target)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_workspace_file() {
        let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rust-toolchain.toml")).unwrap();
        let toolchain = parse(&file).unwrap();
        assert!(!toolchain.channel.is_empty());
        assert!(toolchain.targets.iter().any(|target| target == "wasm32-wasip1"), "{toolchain:?}");
    }

    #[test]
    fn parses_channel_and_targets() {
        let file = r#"
[toolchain]
channel = "1.95.0"   # pinned
components = ["rustfmt", "clippy"]
targets = ["wasm32-wasip1", "wasm32-unknown-unknown",]
"#;
        let want = Toolchain {
            channel: "1.95.0".into(),
            targets: vec!["wasm32-wasip1".into(), "wasm32-unknown-unknown".into()],
        };
        assert_eq!(parse(file).unwrap(), want);
        assert_eq!(parse("[toolchain]\nchannel = \"stable\"\n").unwrap().targets, Vec::<String>::new());
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(parse("[toolchain]\n").is_err());
        assert!(parse("channel = \"1.95.0\"\ntargets = [\n  \"wasm32-wasip1\",\n]\n").is_err());
    }

    #[test]
    fn lists_missing_targets() {
        let wanted = vec!["wasm32-wasip1".to_owned(), "wasm32-unknown-unknown".to_owned()];
        let check = |installed: &str, expected: &[&str]| assert_eq!(missing_targets(&wanted, installed), expected);
        check("x86_64-unknown-linux-gnu\n", &["wasm32-wasip1", "wasm32-unknown-unknown"]);
        check("wasm32-unknown-unknown\nwasm32-wasip1\nx86_64-unknown-linux-gnu\n", &[]);
        check("wasm32-wasip1\n", &["wasm32-unknown-unknown"]);
        // A prefix is not a match.
        check("wasm32-wasip1-threads\nwasm32-unknown-unknown\n", &["wasm32-wasip1"]);
    }
}
