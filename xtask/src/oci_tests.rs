//! Tests of `cargo xtask oci`: the written layout is re-read the way a
//! registry client and Istio's fetcher read it.

use std::io::Read;
use std::process::Command;

use flate2::read::GzDecoder;

use super::*;

/// A module-like byte string: the wasm magic and version, then bytes that
/// do not compress to nothing.
fn module(seed: u8, len: usize) -> Vec<u8> {
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    let mut state = u32::from(seed) | 1;
    bytes.extend((0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as u8
    }));
    bytes
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-oci-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `(name, bytes)` of every entry of a ustar archive, checking each header's
/// checksum and the two-zero-block end.
fn read_tar(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    assert_eq!(archive.len() % TAR_BLOCK, 0, "archive is not whole blocks");
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        let header = &archive[offset..offset + TAR_BLOCK];
        if header.iter().all(|&byte| byte == 0) {
            assert!(archive[offset..].iter().all(|&byte| byte == 0), "data after the end marker");
            assert!(archive.len() - offset >= 2 * TAR_BLOCK, "end marker shorter than two blocks");
            return entries;
        }
        let field = |range: std::ops::Range<usize>| {
            std::str::from_utf8(&header[range]).unwrap().trim_end_matches(['\0', ' ']).to_owned()
        };
        let octal = |range| u64::from_str_radix(&field(range), 8).unwrap();
        let mut unsummed = header.to_vec();
        unsummed[148..156].fill(b' ');
        assert_eq!(octal(148..156), unsummed.iter().map(|&b| u64::from(b)).sum::<u64>(), "checksum of {header:?}");
        assert_eq!(&header[257..263], b"ustar\0");
        assert_eq!(octal(136..148), 0, "mtime must be fixed");
        let size = octal(124..136) as usize;
        let data_start = offset + TAR_BLOCK;
        entries.push((field(0..100), archive[data_start..data_start + size].to_vec()));
        offset = data_start + size.next_multiple_of(TAR_BLOCK);
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Reads blob `descriptor` from the layout at `dir`, checking its digest
/// and size against the descriptor.
fn read_blob(dir: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(digest)).unwrap();
    assert_eq!(digest::sha256_bytes(&bytes), digest, "blob content does not match its digest");
    assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64), "size of {descriptor}");
    bytes
}

#[test]
fn layout_has_the_shape_istio_pulls_and_every_digest_checks_out() {
    let module = module(7, 300_000);
    let image = build_image(&module, "1.2.3").unwrap();
    let dir = scratch_dir("layout");
    write_layout(&dir, &image).unwrap();

    let layout: Value = serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["mediaType"], MANIFEST_MEDIA_TYPE);
    // The tag oras resolves in `--from-oci-layout DIR:1.2.3`.
    assert_eq!(manifests[0]["annotations"][REF_NAME_ANNOTATION], "1.2.3");
    assert_eq!(manifests[0]["digest"], format!("sha256:{}", image.manifest_digest));

    let manifest: Value = serde_json::from_slice(&read_blob(&dir, &manifests[0])).unwrap();
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["annotations"][VARIANT_ANNOTATION], "compat");
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    let config: Value = serde_json::from_slice(&read_blob(&dir, &manifest["config"])).unwrap();

    // Istio's extractOCIStandardImage: exactly one layer, of type
    // `application/vnd.oci.image.layer.v1.tar+gzip`, a tar.gz holding a
    // file whose base name is plugin.wasm.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
    let layer_tar = gunzip(&read_blob(&dir, &layers[0]));
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", digest::sha256_bytes(&layer_tar)));
    let entries = read_tar(&layer_tar);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, PLUGIN_FILE);
    assert!(entries[0].1 == module, "plugin.wasm differs from the module");
    assert_eq!(image.module_digest, digest::sha256_bytes(&module));

    // No file in the layout that the index does not account for.
    let blob_count = std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count();
    assert_eq!(blob_count, 3, "config, layer and manifest");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tarball_holds_the_same_layout() {
    let image = build_image(&module(3, 10_000), "v1").unwrap();
    let entries = read_tar(&layout_tar(&image).unwrap());
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected = vec!["blobs/", "blobs/sha256/", "index.json", "oci-layout"];
    let blob_names: Vec<String> = image.blobs.iter().map(|(digest, _)| format!("blobs/sha256/{digest}")).collect();
    expected.extend(blob_names.iter().map(String::as_str));
    expected.sort();
    assert_eq!(names, expected);
    for (name, bytes) in &entries {
        match name.strip_prefix("blobs/sha256/") {
            Some("") | None => {}
            Some(digest) => assert_eq!(digest::sha256_bytes(bytes), digest, "{name}"),
        }
    }
    let index = &entries.iter().find(|(name, _)| name == "index.json").unwrap().1;
    assert_eq!(index, &image.index_json);
}

#[test]
fn the_system_tar_reads_the_archives() {
    // GNU tar (or bsdtar) is an independent reader of both the hand-written
    // ustar headers and the gzip stream: the layout tarball lists, and
    // plugin.wasm comes out of the layer byte for byte.
    let module = module(11, 50_000);
    let image = build_image(&module, "t").unwrap();
    let dir = scratch_dir("systar");
    let tarball = dir.join("image.tar");
    std::fs::write(&tarball, layout_tar(&image).unwrap()).unwrap();
    let listing = Command::new("tar").arg("-tf").arg(&tarball).output().expect("`tar` is on PATH");
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.lines().any(|line| line == "index.json"), "{listing}");
    assert!(listing.lines().any(|line| line == format!("blobs/sha256/{}", image.manifest_digest)), "{listing}");

    let layer_digest = &image.blobs[1].0;
    let layer = dir.join("layer.tar.gz");
    std::fs::write(&layer, &image.blobs[1].1).unwrap();
    let extracted = Command::new("tar").arg("-xzOf").arg(&layer).arg(PLUGIN_FILE).output().unwrap();
    assert!(extracted.status.success(), "layer {layer_digest}: {}", String::from_utf8_lossy(&extracted.stderr));
    assert!(extracted.stdout == module, "tar extracted different bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_builds_give_the_same_digest() {
    let module = module(5, 200_000);
    let first = build_image(&module, "1.0.0").unwrap();
    let second = build_image(&module, "1.0.0").unwrap();
    assert_eq!(first, second);
    assert_eq!(layout_tar(&first).unwrap(), layout_tar(&second).unwrap());
    // The tag lives only in index.json, so retagging keeps the digest; a
    // different module changes it.
    assert_eq!(build_image(&module, "other").unwrap().manifest_digest, first.manifest_digest);
    assert_ne!(build_image(&self::module(6, 200_000), "1.0.0").unwrap().manifest_digest, first.manifest_digest);
}

#[test]
fn the_built_filter_packages_reproducibly() {
    // The real module when `cargo xtask build` has produced it; the
    // synthetic tests above cover the format either way.
    let paths = Paths::discover();
    let Ok(module) = std::fs::read(paths.filter_wasm()) else {
        eprintln!("skipping: {} is not built", paths.filter_wasm().display());
        return;
    };
    let first = build_image(&module, "0.1.0").unwrap();
    let dir = scratch_dir("real");
    write_layout(&dir.join("a"), &first).unwrap();
    write_layout(&dir.join("b"), &build_image(&module, "0.1.0").unwrap()).unwrap();
    for (name, _) in layout_files(&first) {
        assert_eq!(
            std::fs::read(dir.join("a").join(&name)).unwrap(),
            std::fs::read(dir.join("b").join(&name)).unwrap()
        );
    }
    eprintln!("canary_filter.wasm: image sha256:{} module {}", first.manifest_digest, first.module_digest);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let err = build_image(b"not wasm", "v1").unwrap_err().to_string();
    assert!(err.contains("wasm magic"), "{err}");
    let check = |args: &[&str], expected: Result<(&str, bool), &str>| {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        match (OciArgs::parse(&args), expected) {
            (Ok(got), Ok((tag, update_manifests))) => {
                assert_eq!(got, OciArgs { tag: tag.to_owned(), update_manifests }, "{args:?}")
            }
            (Err(err), Err(want)) => assert!(err.to_string().contains(want), "{err}"),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    };
    check(&[], Ok((env!("CARGO_PKG_VERSION"), false)));
    check(&["--tag", "1.4.0-rc.1"], Ok(("1.4.0-rc.1", false)));
    check(&["--update-manifests"], Ok((env!("CARGO_PKG_VERSION"), true)));
    check(&["--update-manifests", "--tag", "2.0.0"], Ok(("2.0.0", true)));
    check(&["--tag", "2.0.0", "--update-manifests"], Ok(("2.0.0", true)));
    check(&["--tag", "-bad"], Err("not a valid OCI tag"));
    check(&["--tag", "a/b"], Err("not a valid OCI tag"));
    check(&["--tag"], Err("usage: cargo xtask oci"));
    check(&["--push"], Err("usage: cargo xtask oci"));
}

const WASMPLUGIN: &str = "\
# comment: sha256: is the image digest
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
spec:
  url: oci://r/canary-filter:0.1.0
  sha256: 0000000000000000000000000000000000000000000000000000000000000000
  pluginConfig:
    sticky:
      header: x-user-id
";

#[test]
fn the_wasmplugin_sha256_is_rewritten_in_place_and_checked() {
    let module = module(7, 10_000);
    let digest = image_digest(&module).unwrap();
    assert_eq!(digest, build_image(&module, "any-tag").unwrap().manifest_digest);
    let stale = check_wasmplugin(WASMPLUGIN, &module).unwrap_err().to_string();
    assert!(stale.contains("run `cargo xtask oci --update-manifests`"), "{stale}");
    assert!(stale.contains(&digest) && stale.contains(WASMPLUGIN_MANIFEST), "{stale}");

    let updated = with_wasmplugin_sha256(WASMPLUGIN, &digest).unwrap();
    assert_eq!(updated, WASMPLUGIN.replace(&"0".repeat(64), &digest), "only the sha256 line changes");
    check_wasmplugin(&updated, &module).unwrap();
    assert_eq!(with_wasmplugin_sha256(&updated, &digest).unwrap(), updated);

    let refuse = |text: &str, want: &str| {
        let err = format!("{:#}", check_wasmplugin(text, &module).unwrap_err());
        assert!(err.contains(want), "{err}");
    };
    refuse("spec:\n  url: oci://r/x:1\n", "no `sha256:` line");
    refuse(&format!("{updated}  sha256: {digest}\n"), "more than one `sha256:` line");
    refuse(&WASMPLUGIN.replace(&"0".repeat(64), &digest.to_uppercase()), "not 64 lowercase hex digits");
    refuse(&WASMPLUGIN.replace(&"0".repeat(64), &format!("sha256:{digest}")), "not 64 lowercase hex digits");
}

/// The staleness check: the WasmPlugin in the repository must pin the
/// image of the release filter built from this tree. CI's host test step
/// sets CANARY_FILTER_WASM after building it, so there the module must
/// exist; a local `cargo test -p xtask` before any build skips (and
/// `cargo xtask k8s-validate` builds and checks regardless).
#[test]
fn the_repository_wasmplugin_pins_the_image_of_the_built_filter() {
    let paths = Paths::discover();
    let wasm = match std::env::var_os(crate::tasks::CANARY_FILTER_WASM) {
        Some(wasm) => PathBuf::from(wasm),
        None if paths.filter_wasm().is_file() => paths.filter_wasm(),
        None => {
            eprintln!("skipping: {} is not built", paths.filter_wasm().display());
            return;
        }
    };
    if let Err(error) = check_manifests(&paths, &wasm) {
        panic!("{error:#}");
    }
}
