//! `cargo xtask oci`: the filter as an OCI image that Istio's WasmPlugin can
//! pull, written without Docker: an OCI image layout directory
//! (`target/oci/canary-filter/`) and the same layout as a tarball
//! (`target/oci/canary-filter.tar`).
//!
//! The image is the *compat* variant of the Wasm image spec: an ordinary OCI
//! image whose single `application/vnd.oci.image.layer.v1.tar+gzip` layer
//! holds `plugin.wasm` at its root, annotated
//! `module.wasm.image/variant: compat`. Istio's fetcher
//! (`pkg/wasm/imagefetcher.go` in istio/istio) tries that shape first and
//! accepts it in every version we read (older ones take the last layer, newer
//! ones demand exactly one). Its other accepted shape, the *oci* variant with
//! `application/vnd.module.wasm.content.layer.v1+wasm`, must have exactly two
//! layers there, which the one-layer wasm artifacts most tools push do not
//! have; the compat variant also goes through registries that reject custom
//! media types. So compat is the one variant written.
//!
//! The output is byte-for-byte reproducible: the tar entries have fixed
//! owners, modes and a zero mtime, the gzip header has no time or name, and
//! the JSON documents are written with their keys in sorted order. Building
//! twice from the same module gives the same image digest.
//!
//! The tar writer is hand-written (one regular file per layer, plus the
//! layout's few files): the `tar` crate is not in the lock file, and ustar
//! headers for short names are a fixed 512-byte record.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};

use crate::{Paths, digest, tasks};

/// The repository name the image is written and pushed under.
pub const IMAGE_NAME: &str = "canary-filter";
/// The file Istio's compat-variant extractor looks for
/// (`extractWasmPluginBinary` in `pkg/wasm/imagefetcher.go`).
pub const PLUGIN_FILE: &str = "plugin.wasm";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// go-containerregistry's `types.OCILayer`, the only layer type Istio's
/// `extractOCIStandardImage` accepts.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// Where OCI layouts keep the tag of a manifest (image-layout spec).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A built image: every blob by digest, plus the two layout files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `(hex sha256, bytes)` of the config, the layer and the manifest, in
    /// that order.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub index_json: Vec<u8>,
    /// Hex sha256 of the manifest: the image digest a registry reports and
    /// what a WasmPlugin's `sha256` is checked against for `oci://` URLs.
    pub manifest_digest: String,
    /// Hex sha256 of the module itself.
    pub module_digest: String,
}

/// The WasmPlugin whose `spec.sha256` pins the image, relative to the
/// workspace root. The overlays inherit `url` and `sha256` from it.
pub const WASMPLUGIN_MANIFEST: &str = "envoy-config/istio/base/wasmplugin.yaml";

/// `cargo xtask oci [--tag VERSION] [--update-manifests]`.
pub fn oci(paths: &Paths, args: &[String]) -> Result<()> {
    let args = OciArgs::parse(args)?;
    // Only the release module; `tasks::build_filter` would also build the
    // test-only panicking variant, which no image carries.
    tasks::build_release_filter(paths)?;
    let wasm = paths.filter_wasm();
    let module = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let image = build_image(&module, &args.tag)?;
    let module_digest = digest::sha256_file(&wasm)?;
    ensure!(module_digest == image.module_digest, "{} changed while it was packaged", wasm.display());

    let out = paths.target.join("oci");
    let layout = out.join(IMAGE_NAME);
    let tarball = out.join(format!("{IMAGE_NAME}.tar"));
    write_layout(&layout, &image)?;
    std::fs::write(&tarball, layout_tar(&image)?).with_context(|| format!("writing {}", tarball.display()))?;

    eprintln!("OCI image layout: {}", layout.display());
    eprintln!("OCI layout tarball: {}", tarball.display());
    println!("image digest: sha256:{}", image.manifest_digest);
    println!("module sha256: {}", image.module_digest);
    if args.update_manifests {
        let manifest = paths.root.join(WASMPLUGIN_MANIFEST);
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let updated = with_wasmplugin_sha256(&text, &image.manifest_digest)
            .with_context(|| format!("updating {WASMPLUGIN_MANIFEST}"))?;
        if updated != text {
            std::fs::write(&manifest, updated).with_context(|| format!("writing {}", manifest.display()))?;
            eprintln!("{WASMPLUGIN_MANIFEST}: spec.sha256 set to {}", image.manifest_digest);
        } else {
            eprintln!("{WASMPLUGIN_MANIFEST}: spec.sha256 was already {}", image.manifest_digest);
        }
    }
    eprint!("{}", push_help(&layout, &tarball, &args.tag, &image));
    Ok(())
}

/// The hex image digest (what a WasmPlugin's `sha256` must be for an
/// `oci://` URL) of the compat-variant image of `module`. The tag lives
/// only in the layout's `index.json`, never in the manifest, so the digest
/// depends on the module alone.
pub fn image_digest(module: &[u8]) -> Result<String> {
    Ok(build_image(module, "digest")?.manifest_digest)
}

/// Errors unless the WasmPlugin in `wasmplugin_text` pins the image of
/// `module`, naming the file, both digests and the command that fixes it.
pub fn check_wasmplugin(wasmplugin_text: &str, module: &[u8]) -> Result<()> {
    let pinned = wasmplugin_sha256(wasmplugin_text).with_context(|| format!("reading {WASMPLUGIN_MANIFEST}"))?;
    let built = image_digest(module)?;
    ensure!(
        pinned == built,
        "{WASMPLUGIN_MANIFEST}: spec.sha256 is {pinned}, but the OCI image of the filter built from this tree has \
         digest {built}; Istio would refuse to load it: run `cargo xtask oci --update-manifests`"
    );
    Ok(())
}

/// Checks the repository's WasmPlugin against the release module built at
/// `wasm` (`cargo xtask k8s-validate` and the xtask test suite).
pub fn check_manifests(paths: &Paths, wasm: &Path) -> Result<()> {
    let module = std::fs::read(wasm)
        .with_context(|| format!("reading {} (build it with `cargo xtask build` first)", wasm.display()))?;
    let manifest = paths.root.join(WASMPLUGIN_MANIFEST);
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    check_wasmplugin(&text, &module)
}

/// The one `  sha256: <hex>` line of the WasmPlugin's spec. A line-level
/// edit keeps the file's comments, which a YAML round trip would drop; the
/// manifests test checks the rendered objects with a real YAML parser.
fn sha256_line(text: &str) -> Result<(usize, &str)> {
    let mut found = text.lines().enumerate().filter_map(|(number, line)| {
        line.strip_prefix(SHA256_KEY).map(|value| (number, value.split('#').next().unwrap_or("").trim()))
    });
    let Some(first) = found.next() else { bail!("no `{}` line", SHA256_KEY.trim()) };
    ensure!(found.next().is_none(), "more than one `{}` line", SHA256_KEY.trim());
    Ok(first)
}

/// Two spaces: the key sits directly under `spec:`.
const SHA256_KEY: &str = "  sha256: ";

fn wasmplugin_sha256(text: &str) -> Result<String> {
    let (_, value) = sha256_line(text)?;
    let value = value.trim_matches('"');
    ensure!(
        value.len() == 64 && value.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')),
        "spec.sha256 `{value}` is not 64 lowercase hex digits"
    );
    Ok(value.to_owned())
}

/// `text` with spec.sha256 replaced by `digest`, everything else untouched.
fn with_wasmplugin_sha256(text: &str, digest: &str) -> Result<String> {
    let (line_number, _) = sha256_line(text)?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[line_number] = format!("{SHA256_KEY}{digest}");
    let mut updated = lines.join("\n");
    if text.ends_with('\n') {
        updated.push('\n');
    }
    Ok(updated)
}

/// The arguments of `cargo xtask oci`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OciArgs {
    /// From `--tag VERSION`, else the workspace version.
    tag: String,
    /// `--update-manifests`: write the image digest into [`WASMPLUGIN_MANIFEST`].
    update_manifests: bool,
}

impl OciArgs {
    fn parse(args: &[String]) -> Result<OciArgs> {
        let usage = || format!("usage: cargo xtask oci [--tag VERSION] [--update-manifests], got `{}`", args.join(" "));
        let mut parsed = OciArgs { tag: env!("CARGO_PKG_VERSION").to_owned(), update_manifests: false };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--tag" => parsed.tag = rest.next().ok_or_else(|| anyhow::anyhow!(usage()))?.clone(),
                "--update-manifests" => parsed.update_manifests = true,
                _ => bail!(usage()),
            }
        }
        let tag = &parsed.tag;
        // The OCI distribution spec's tag grammar: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
        let valid = tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        ensure!(valid, "--tag `{tag}` is not a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})");
        Ok(parsed)
    }
}

/// Builds the compat-variant image of `module`, tagged `tag` in the index.
pub fn build_image(module: &[u8], tag: &str) -> Result<Image> {
    // Istio's cache rejects anything without the wasm magic
    // (`isValidWasmBinary` in pkg/wasm/cache.go); fail here rather than at pull time.
    ensure!(module.starts_with(b"\0asm"), "the module does not start with the wasm magic number");
    let layer_tar = tar_archive(&[TarEntry::file(PLUGIN_FILE, module)])?;
    let layer = gzip(&layer_tar)?;
    // Keys are written in sorted order so the bytes do not depend on
    // whether serde_json preserves insertion order in this build.
    let config = json_bytes(&json!({
        "architecture": "wasm",
        "config": {},
        "os": "wasip1",
        "rootfs": { "diff_ids": [format!("sha256:{}", digest::sha256_bytes(&layer_tar))], "type": "layers" },
    }))?;
    let manifest = json_bytes(&json!({
        "annotations": { VARIANT_ANNOTATION: "compat" },
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
        "mediaType": MANIFEST_MEDIA_TYPE,
        "schemaVersion": 2,
    }))?;
    let mut manifest_descriptor = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_descriptor["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
    let index_json = json_bytes(&json!({
        "manifests": [manifest_descriptor],
        "mediaType": INDEX_MEDIA_TYPE,
        "schemaVersion": 2,
    }))?;
    let manifest_digest = digest::sha256_bytes(&manifest);
    let blobs = [config, layer, manifest].into_iter().map(|blob| (digest::sha256_bytes(&blob), blob)).collect();
    Ok(Image { blobs, index_json, manifest_digest, module_digest: digest::sha256_bytes(module) })
}

/// Writes the image as an OCI image layout directory, replacing any earlier one.
pub fn write_layout(dir: &Path, image: &Image) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the old layout {}", dir.display()))?;
    }
    for (name, bytes) in layout_files(image) {
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The layout as one tar (what `oras cp --from-oci-layout x.tar:TAG` and
/// `skopeo copy oci-archive:x.tar` read).
pub fn layout_tar(image: &Image) -> Result<Vec<u8>> {
    let files = layout_files(image);
    let mut entries = vec![TarEntry::dir("blobs/"), TarEntry::dir("blobs/sha256/")];
    entries.extend(files.iter().map(|(name, bytes)| TarEntry::file(name, bytes)));
    entries.sort_by(|a, b| a.name.cmp(b.name));
    tar_archive(&entries)
}

/// `(relative path, bytes)` of every file of the layout, sorted by path.
fn layout_files(image: &Image) -> Vec<(String, &[u8])> {
    let mut files: Vec<(String, &[u8])> =
        vec![("oci-layout".to_owned(), OCI_LAYOUT.as_bytes()), ("index.json".to_owned(), image.index_json.as_slice())];
    files.extend(image.blobs.iter().map(|(digest, bytes)| (format!("blobs/sha256/{digest}"), bytes.as_slice())));
    files.sort();
    files
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "digest": format!("sha256:{}", digest::sha256_bytes(blob)), "mediaType": media_type, "size": blob.len() })
}

fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("serializing an OCI document")
}

/// Gzip with no file name and a zero mtime in the header, so equal input
/// gives equal bytes.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    std::io::Write::write_all(&mut encoder, bytes).context("gzip")?;
    encoder.finish().context("gzip")
}

/// One entry of a hand-written ustar archive.
#[derive(Debug, Clone, Copy)]
struct TarEntry<'a> {
    name: &'a str,
    bytes: &'a [u8],
    directory: bool,
}

impl<'a> TarEntry<'a> {
    fn file(name: &'a str, bytes: &'a [u8]) -> Self {
        Self { name, bytes, directory: false }
    }

    fn dir(name: &'a str) -> Self {
        Self { name, bytes: &[], directory: true }
    }
}

const TAR_BLOCK: usize = 512;

/// A POSIX ustar archive of `entries` in the given order, owned by root,
/// mode 0644 (0755 for directories), mtime 0, ending with two zero blocks.
fn tar_archive(entries: &[TarEntry<'_>]) -> Result<Vec<u8>> {
    let mut archive = Vec::new();
    for entry in entries {
        archive.extend_from_slice(&tar_header(entry)?);
        archive.extend_from_slice(entry.bytes);
        archive.resize(archive.len().next_multiple_of(TAR_BLOCK), 0);
    }
    archive.resize(archive.len() + 2 * TAR_BLOCK, 0);
    Ok(archive)
}

fn tar_header(entry: &TarEntry<'_>) -> Result<[u8; TAR_BLOCK]> {
    // Every name here is short ("blobs/sha256/<64 hex>" is 77 bytes), so the
    // 100-byte name field suffices and no prefix or PAX header is needed.
    ensure!(entry.name.len() < 100 && entry.name.is_ascii(), "tar entry name `{}` is too long", entry.name);
    // The 12-byte size field holds 11 octal digits: up to 8 GiB.
    ensure!((entry.bytes.len() as u64) < 1 << 33, "tar entry `{}` is larger than 8 GiB", entry.name);
    let mut header = [0u8; TAR_BLOCK];
    let mut put = |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, entry.name.as_bytes());
    put(100, if entry.directory { b"0000755\0" } else { b"0000644\0" });
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", entry.bytes.len()).as_bytes());
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // the checksum counts its own field as spaces
    put(156, if entry.directory { b"5" } else { b"0" });
    put(257, b"ustar\0");
    put(263, b"00");
    let checksum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    Ok(header)
}

/// How to publish the layout and point a WasmPlugin at it.
fn push_help(layout: &Path, tarball: &Path, tag: &str, image: &Image) -> String {
    let (layout, tarball) = (relative(layout).display().to_string(), relative(tarball).display().to_string());
    format!(
        "\
push it with either tool (REGISTRY like ghcr.io/you); both keep the digest above:
  oras cp --from-oci-layout {layout}:{tag} REGISTRY/{IMAGE_NAME}:{tag}
  oras cp --from-oci-layout {tarball}:{tag} REGISTRY/{IMAGE_NAME}:{tag}
  crane push {layout} REGISTRY/{IMAGE_NAME}:{tag}
(`crane push` reads a directory as an OCI layout; a .tar it would read as a docker tarball.)
WasmPlugin (envoy-config/istio/OCI.md):
  url: oci://REGISTRY/{IMAGE_NAME}:{tag}
  sha256: {manifest}   # for oci:// URLs Istio compares the image digest, not the module's
  # or pin it in the URL: oci://REGISTRY/{IMAGE_NAME}@sha256:{manifest}
  # for an http(s):// URL to the bare .wasm, sha256 is the module's: {module}
",
        manifest = image.manifest_digest,
        module = image.module_digest,
    )
}

/// `path` relative to the current directory when it is below it, for
/// copy-pasteable commands.
fn relative(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
#[path = "oci_tests.rs"]
mod tests;
