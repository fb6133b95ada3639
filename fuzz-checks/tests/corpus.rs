//! Replays every committed input under `fuzz/corpus/<target>/` (seeds and
//! crash reproducers) through its target's check, so `cargo test` on stable
//! guards every finding even where nightly and cargo-fuzz are unavailable.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn every_target_has_a_seed_corpus_and_it_passes() {
    for &(target, check) in canary_fuzz_checks::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        let mut replayed = 0usize;
        for entry in entries {
            let path = entry.unwrap_or_else(|error| panic!("{}: {error}", dir.display())).path();
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            // Name the input on failure: a panic inside `check` alone would
            // not say which file broke.
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} breaks an invariant", path.display());
            replayed += 1;
        }
        assert!(replayed >= 5, "{target}: only {replayed} corpus files in {}", dir.display());
    }
}
