//! Drops the per-request callbacks a module does not implement from its
//! exports: the filter's, and the overhead benchmark's two floors'.
//!
//! Why: the proxy-wasm Rust SDK exports every `proxy_on_*` callback of the
//! ABI, and Envoy enters the VM for each exported one on every request,
//! whether or not the filter overrides it: `proxy_on_response_headers`,
//! `proxy_on_response_body` once per body chunk, and so on. Envoy skips a
//! callback the module does not export and carries on as if it had returned
//! `Continue`. Each entry costs about 1.5% of Envoy's CPU per request, side
//! by side at the overhead benchmark's rate (`bench/README.md`), more than
//! the split itself. The SDK offers no switch for its exports, and writing
//! the ABI glue by hand would need `unsafe`, which the workspace forbids.
//!
//! The floors (b) and (c) are pruned the same way, each down to what it
//! implements: the benchmark compares the filter's work with theirs, not a
//! pruned module with unpruned ones.
//!
//! The pruning is done with `wasmparser` and `wasm-encoder`: every section is
//! copied byte for byte except the export section, which is re-encoded
//! without the pruned names. Pruning an already pruned module is a no-op, so
//! the build may run it on Cargo's output in place.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// Every per-request callback of an HTTP context, with the SDK trait
/// method that implements it. A module keeps the ones it implements.
const HTTP_CALLBACKS: [(&str, &str); 7] = [
    ("proxy_on_request_headers", "on_http_request_headers"),
    ("proxy_on_request_body", "on_http_request_body"),
    ("proxy_on_request_trailers", "on_http_request_trailers"),
    ("proxy_on_response_headers", "on_http_response_headers"),
    ("proxy_on_response_body", "on_http_response_body"),
    ("proxy_on_response_trailers", "on_http_response_trailers"),
    ("proxy_on_log", "on_log"),
];

/// One module's pruning: which of [`HTTP_CALLBACKS`] it implements, and
/// which other exports it needs besides [`CONTEXT_CALLBACKS`].
pub struct Pruning {
    /// What the module is, for messages: `filter`.
    pub module: &'static str,
    /// The per-request callbacks it implements; the others are pruned.
    pub implemented: &'static [&'static str],
    /// Root-context callbacks it implements (ticks, queues, HTTP calls).
    pub root_callbacks: &'static [&'static str],
}

impl Pruning {
    /// The exports to drop, each with the trait method that would
    /// implement it. A callback a module starts to implement must go into
    /// `implemented`, or it will never run; the test
    /// `no_module_implements_a_callback_it_prunes` looks for the methods in
    /// the module's sources.
    pub fn pruned(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        HTTP_CALLBACKS.into_iter().filter(|(export, _)| !self.implemented.contains(export))
    }

    /// Exports the module must still have after pruning.
    pub fn kept(&self) -> impl Iterator<Item = &'static str> + '_ {
        CONTEXT_CALLBACKS.into_iter().chain(self.implemented.iter().copied()).chain(self.root_callbacks.iter().copied())
    }
}

/// What the SDK needs of every module to create its root and HTTP contexts.
const CONTEXT_CALLBACKS: [&str; 6] = [
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_done",
    "proxy_on_delete",
];

/// The canary filter: it decides in `on_http_request_headers` and records
/// the status and latency in `on_log`, where Envoy hands over the response
/// headers sent. (`on_done` cannot read them: Envoy answers `BadArgument`
/// outside the access-log phase, and the SDK's `get_map_value_bytes`
/// panics on that.)
pub const FILTER: Pruning = Pruning {
    module: "filter",
    implemented: &["proxy_on_request_headers", "proxy_on_log"],
    root_callbacks: &["proxy_on_tick", "proxy_on_queue_ready", "proxy_on_http_call_response"],
};

/// Floor (b) of the overhead benchmark: no per-request callback at all.
pub const NOOP_FLOOR: Pruning = Pruning { module: "no-op floor (b)", implemented: &[], root_callbacks: &[] };

/// Floor (c): the route header set in `on_http_request_headers`, nothing
/// else.
pub const SPLITTER_FLOOR: Pruning =
    Pruning { module: "splitter floor (c)", implemented: &["proxy_on_request_headers"], root_callbacks: &[] };

/// What [`prune`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pruned {
    /// These exports were dropped.
    Dropped(Vec<String>),
    /// None of the names was exported: the module was already pruned.
    AlreadyPruned,
}

/// `module` without the exports named in `names`. Fails if it exports some
/// of `names` but not all, which means the list no longer matches the
/// module (e.g. an SDK update renamed a callback), or if `module` is not a
/// valid wasm module.
pub fn prune(module: &[u8], names: &[&str]) -> Result<(Vec<u8>, Pruned)> {
    let mut out = Module::new();
    let mut dropped = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.context("parsing the wasm module")?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.context("reading the export section")?;
                if names.contains(&export.name) {
                    dropped.push(export.name.to_owned());
                } else {
                    exports.export(export.name, export_kind(export.kind)?, export.index);
                }
            }
            out.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            out.section(&RawSection { id, data: &module[range] });
        }
    }
    if dropped.is_empty() {
        return Ok((module.to_vec(), Pruned::AlreadyPruned));
    }
    if dropped.len() != names.len() {
        let missing: Vec<&str> = names.iter().copied().filter(|name| !dropped.iter().any(|d| d == name)).collect();
        bail!("the module exports {dropped:?} but not {missing:?}: the list of callbacks to prune is out of date");
    }
    Ok((out.finish(), Pruned::Dropped(dropped)))
}

/// The exports of `module`, by name.
pub fn export_names(module: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::ExportSection(reader) = payload.context("parsing the wasm module")? {
            for export in reader {
                names.push(export.context("reading the export section")?.name.to_owned());
            }
        }
    }
    Ok(names)
}

/// Prunes the module at `path` in place as `pruning` says, and checks that
/// it still exports what `pruning` keeps.
pub fn prune_in_place(path: &Path, pruning: &Pruning) -> Result<()> {
    let module = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let names: Vec<&str> = pruning.pruned().map(|(export, _)| export).collect();
    let (pruned, outcome) =
        prune(&module, &names).with_context(|| format!("pruning the exports of {}", path.display()))?;
    let exports = export_names(&pruned)?;
    let lost: Vec<&str> = pruning.kept().filter(|name| !exports.iter().any(|e| e == name)).collect();
    ensure!(lost.is_empty(), "{} does not export {lost:?}, which the {} needs", path.display(), pruning.module);
    if let Pruned::Dropped(dropped) = outcome {
        std::fs::write(path, &pruned).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{}: dropped the unused exports {}", pruning.module, dropped.join(", "));
    }
    Ok(())
}

fn export_kind(kind: ExternalKind) -> Result<ExportKind> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        other => bail!("an export of kind {other:?}, which this pruning does not know"),
    })
}

#[cfg(test)]
mod tests {
    use wasm_encoder::{CodeSection, CustomSection, Function, FunctionSection, Instruction, TypeSection};

    use super::*;

    /// A module with one function exported under each of `names`, and a
    /// custom section.
    fn module_exporting(names: &[&str]) -> Vec<u8> {
        let mut module = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut exports = ExportSection::new();
        for name in names {
            exports.export(name, ExportKind::Func, 0);
        }
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        module.section(&CustomSection { name: "producers".into(), data: b"kept".as_slice().into() });
        module.finish()
    }

    #[test]
    fn drops_exactly_the_named_exports_and_keeps_every_other_byte() {
        let module = module_exporting(&["proxy_on_log", "proxy_on_response_body", "proxy_on_done"]);
        let (pruned, outcome) = prune(&module, &["proxy_on_response_body"]).unwrap();
        assert_eq!(outcome, Pruned::Dropped(vec!["proxy_on_response_body".to_owned()]));
        assert_eq!(export_names(&pruned).unwrap(), ["proxy_on_log", "proxy_on_done"]);
        wasmparser::validate(&pruned).unwrap();
        // The same module but for the export: every other section is
        // copied as it was, custom ones included.
        assert_eq!(pruned, module_exporting(&["proxy_on_log", "proxy_on_done"]));
    }

    #[test]
    fn pruning_twice_changes_nothing() {
        let module = module_exporting(&["proxy_on_log", "proxy_on_response_body"]);
        let (once, _) = prune(&module, &["proxy_on_response_body"]).unwrap();
        let (twice, outcome) = prune(&once, &["proxy_on_response_body"]).unwrap();
        assert_eq!(outcome, Pruned::AlreadyPruned);
        assert_eq!(twice, once);
    }

    #[test]
    fn a_list_that_no_longer_matches_the_module_is_an_error() {
        let module = module_exporting(&["proxy_on_log", "proxy_on_response_body"]);
        let error = prune(&module, &["proxy_on_response_body", "proxy_on_renamed"]).unwrap_err();
        assert!(format!("{error:#}").contains("proxy_on_renamed"), "{error:#}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let names = ["proxy_on_response_body"];
        let error = prune(b"\0asm\x01\0\0\0\x07\xff", &names).unwrap_err();
        assert!(format!("{error:#}").contains("parsing the wasm module"), "{error:#}");
        assert!(prune(b"not wasm", &names).is_err());
    }

    /// Each module, with the directory of its sources.
    const MODULES: [(&Pruning, &str); 3] =
        [(&FILTER, "filter/src"), (&NOOP_FLOOR, "bench/wasm/noop/src"), (&SPLITTER_FLOOR, "bench/wasm/splitter/src")];

    #[test]
    fn no_module_implements_a_callback_it_prunes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (pruning, sources) in MODULES {
            let dir = root.join(sources);
            let mut read = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|ext| ext != "rs") {
                    continue;
                }
                let source = std::fs::read_to_string(&path).unwrap();
                read += 1;
                for (export, method) in pruning.pruned() {
                    assert!(
                        !source.contains(&format!("fn {method}(")),
                        "{} implements {method}, but the build prunes its export {export} from the {}: add it to \
                         `implemented`",
                        path.display(),
                        pruning.module
                    );
                }
            }
            assert!(read > 0, "no source files in {}", dir.display());
        }
    }

    #[test]
    fn every_module_keeps_what_it_implements_and_prunes_nothing_it_keeps() {
        for (pruning, _) in MODULES {
            for name in pruning.implemented {
                assert!(
                    HTTP_CALLBACKS.iter().any(|(export, _)| export == name),
                    "{}: {name} is not a per-request callback",
                    pruning.module
                );
            }
            for (name, _) in pruning.pruned() {
                assert!(!pruning.kept().any(|kept| kept == name), "{}: {name} is both pruned and kept", pruning.module);
            }
        }
        // The floors do less than the filter, never more.
        assert_eq!(NOOP_FLOOR.pruned().count(), HTTP_CALLBACKS.len());
        assert_eq!(SPLITTER_FLOOR.pruned().count(), FILTER.pruned().count() + 1);
    }
}
