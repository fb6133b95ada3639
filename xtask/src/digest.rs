//! SHA-256 checks for downloaded artifacts.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The lowercase hex SHA-256 of a file, read in chunks (the Envoy wheel is ~37 MB).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// The lowercase hex SHA-256 of in-memory bytes (the OCI image's blobs).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// Errors unless `path` hashes to `expected` (hex, either case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    check_sha256(&actual, expected).with_context(|| format!("refusing {}", path.display()))
}

/// Compares two hex digests. Split from [`verify_sha256`] so the message is testable.
pub fn check_sha256(actual: &str, expected: &str) -> Result<()> {
    if !actual.eq_ignore_ascii_case(expected) {
        bail!("sha256 mismatch: expected {expected}, got {actual}");
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_files_like_sha256sum() {
        let dir = std::env::temp_dir().join(format!("xtask-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |name: &str, content: &[u8], expected: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            assert_eq!(sha256_file(&path).unwrap(), expected, "{name}");
            verify_sha256(&path, &expected.to_uppercase()).unwrap();
        };
        check("empty", b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        check("abc", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // Larger than one read buffer, so the chunk loop is exercised.
        check("big", &vec![b'a'; 200_000], "2287d207f24a941ff3b56c04c8a25ad56b63e3023207b3bb5b4ac0c9869d74be");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatch_names_both_digests() {
        let err = check_sha256("00ff", "a88a").unwrap_err().to_string();
        assert_eq!(err, "sha256 mismatch: expected a88a, got 00ff");
        assert!(check_sha256("A88A", "a88a").is_ok());
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = sha256_file(Path::new("/nonexistent/xtask.whl")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/xtask.whl"));
    }
}
