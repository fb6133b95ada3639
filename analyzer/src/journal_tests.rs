use std::collections::HashSet;

use canary_protocol::{Report, ReportHeader, StatusClass, VersionStats};

use super::*;
use crate::aggregate::AggregateSettings;
use crate::store::StateFile;

const T0_MS: u64 = 1_764_130_000_000;
const SETTINGS: AggregateSettings = AggregateSettings { window_seconds: 60, worker_stale_after_ms: 5_000 };

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn random_report(rng: &mut Rng, proxy_id: &str, worker_id: u64, seq: u64, weights_version: u64) -> Report {
    let mut stats = [VersionStats::default(), VersionStats::default()];
    for _ in 0..rng.below(6) {
        let class = [StatusClass::Success, StatusClass::Redirect, StatusClass::ClientError, StatusClass::ServerError]
            [rng.below(4) as usize];
        // A few latencies keep the histograms, and so the records and the
        // O(n²) tests over them, small.
        let latency_us = [90, 1_000, 25_000, 400_000, 3_000_000][rng.below(5) as usize];
        stats[rng.below(2) as usize].record(class, latency_us);
    }
    // Now and then counts routed under the previous weights.
    let counts_weights_version = if rng.below(5) == 0 { weights_version.saturating_sub(1) } else { weights_version };
    Report {
        header: ReportHeader {
            proxy_id: proxy_id.to_owned(),
            worker_id,
            seq,
            weights_version,
            counts_weights_version,
            max_hold_ms: 1_000,
        },
        versions: [stats[0].to_delta(), stats[1].to_delta()],
    }
}

/// A random history: the snapshot it starts from, the journal file (header
/// and records), the offset where each record starts, and the state file
/// expected after each record.
struct History {
    snapshot: DurableParts,
    file: Vec<u8>,
    record_offsets: Vec<usize>,
    expected: Vec<StateFile>,
}

fn random_history(seed: u64, steps: usize) -> History {
    let mut rng = Rng(seed);
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let mut now_ms = T0_MS;
    let mut seqs = [0u64; 12];
    // Some workers before the snapshot, so that records update known ones.
    for (worker, seq) in seqs.iter_mut().enumerate().take(4) {
        *seq += 1;
        aggregate.ingest(&random_report(&mut rng, "envoy-a", worker as u64, *seq, 1), now_ms);
    }
    let snapshot = StateFile::capture(&aggregate, 1).into_parts().expect("valid");
    let mut encoder = RecordEncoder::default();
    let mut file = header(7).to_vec();
    let mut record_offsets = Vec::new();
    let mut expected = Vec::new();
    let mut changed = HashSet::new();
    for _ in 0..steps {
        now_ms += rng.below(300);
        match rng.below(10) {
            0 => {
                let weight = CanaryWeight::from_bp(rng.below(10_001)).expect("in range");
                aggregate.change_weight(weight, now_ms);
            }
            1..=6 => {
                let worker = rng.below(seqs.len() as u64) as usize;
                // A re-send now and then: a duplicate that only touches the
                // worker's last-seen time and applied version.
                if rng.below(4) != 0 {
                    seqs[worker] += 1;
                }
                let proxy_id = if worker.is_multiple_of(3) { "envoy-b" } else { "envoy-a" };
                let weights_version = aggregate.weights().weights.weights_version;
                let report = random_report(&mut rng, proxy_id, worker as u64, seqs[worker], weights_version);
                aggregate.ingest(&report, now_ms);
                changed.insert(WorkerKey { proxy_id: proxy_id.to_owned(), worker_id: worker as u64 });
            }
            _ => {
                let record = CommitRecord::capture(&aggregate, &std::mem::take(&mut changed));
                record_offsets.push(file.len());
                file.extend(encoder.encode(&record));
                expected.push(StateFile::capture(&aggregate, 1));
            }
        }
    }
    History { snapshot, file, record_offsets, expected }
}

fn replay(snapshot: &DurableParts, records: Vec<CommitRecord>) -> StateFile {
    let mut state = ReplayState::from(snapshot.clone());
    for record in records {
        state.apply(record);
    }
    StateFile::capture(&Aggregate::restore(SETTINGS, T0_MS, state.into()), 1)
}

#[test]
fn replay_equals_direct_application_over_random_histories() {
    for seed in 1..=40 {
        let history = random_history(seed, 300);
        assert!(history.expected.len() > 5, "seed {seed}: too few records to mean anything");
        let scan = scan(&history.file).expect("a whole file scans");
        assert_eq!((scan.generation, scan.valid_bytes), (7, history.file.len()));
        assert_eq!(scan.records.len(), history.expected.len());
        let last = history.expected.last().expect("records");
        assert_eq!(&replay(&history.snapshot, scan.records), last, "seed {seed}");
    }
}

#[test]
fn a_file_cut_at_any_offset_replays_the_records_before_the_cut() {
    // As a kill -9 at any point of an append leaves the file.
    let history = random_history(99, 120);
    let mut replayed_whole = None;
    for cut in 0..=history.file.len() {
        let bytes = &history.file[..cut];
        if cut < HEADER_BYTES {
            assert_eq!(scan(bytes).expect_err("no header").offset, 0);
            continue;
        }
        let scan = scan(bytes).unwrap_or_else(|corrupt| panic!("cut at {cut}: {corrupt:?}"));
        let record_ends = history.record_offsets.iter().skip(1).copied().chain([history.file.len()]);
        let whole = record_ends.filter(|&end| end <= cut).count();
        assert_eq!(scan.records.len(), whole, "cut at {cut}");
        let valid_end = match whole {
            0 => HEADER_BYTES,
            _ => history.record_offsets.get(whole).copied().unwrap_or(history.file.len()),
        };
        assert_eq!(scan.valid_bytes, valid_end, "cut at {cut}");
        // Replaying is the slow part: once per distinct prefix of records.
        if replayed_whole == Some(whole) {
            continue;
        }
        replayed_whole = Some(whole);
        let state = replay(&history.snapshot, scan.records);
        match whole.checked_sub(1) {
            Some(last) => assert_eq!(state, history.expected[last], "cut at {cut}"),
            None => assert_eq!(state, replay(&history.snapshot, Vec::new())),
        }
    }
}

#[test]
fn a_flipped_bit_is_a_torn_tail_in_the_last_record_and_an_error_before_it() {
    let history = random_history(7, 60);
    let records = history.record_offsets.len();
    assert!(records >= 3);
    for bit in 0..HEADER_BYTES * 8 {
        let mut bytes = history.file.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(scan(&bytes).expect_err("damaged header").offset, 0, "bit {bit}");
    }
    let first = history.record_offsets[0];
    let first_end = history.record_offsets[1];
    // One bit per byte, a different one each time, keeps the test quick.
    for bit in (first..first_end).map(|byte| byte * 8 + byte % 8) {
        let mut bytes = history.file.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let corrupt = scan(&bytes).expect_err("a damaged record followed by valid ones");
        assert_eq!(corrupt.offset, first, "bit {bit}: {corrupt:?}");
    }
    let last = history.record_offsets[records - 1];
    for bit in (last..history.file.len()).map(|byte| byte * 8 + byte % 8) {
        let mut bytes = history.file.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let scan = scan(&bytes).unwrap_or_else(|corrupt| panic!("bit {bit}: {corrupt:?}"));
        assert_eq!((scan.records.len(), scan.valid_bytes), (records - 1, last), "bit {bit}");
    }
}

#[test]
fn a_checked_record_that_does_not_decode_is_an_error_even_at_the_tail() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let key = WorkerKey { proxy_id: "envoy-a".into(), worker_id: 3 };
    aggregate.ingest(&random_report(&mut Rng(5), "envoy-a", 3, 1, 1), T0_MS);
    let record = CommitRecord::capture(&aggregate, [&key]);
    let mut encoder = RecordEncoder::default();
    encoder.encode(&record);
    encoder.records = 0;
    // The key was named in another file: here index 0 means nothing.
    let mut file = header(1).to_vec();
    file.extend(encoder.encode(&record));
    let corrupt = scan(&file).expect_err("unknown index");
    assert_eq!(corrupt.offset, HEADER_BYTES);
    assert!(corrupt.message.contains("worker index 0"), "{}", corrupt.message);
}

#[test]
fn records_name_a_worker_once_per_file_then_by_index() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let key = WorkerKey { proxy_id: "a-rather-long-proxy-identifier.example".into(), worker_id: u64::MAX };
    aggregate.ingest(&random_report(&mut Rng(5), &key.proxy_id, key.worker_id, 1, 1), T0_MS);
    let record = CommitRecord::capture(&aggregate, [&key]);
    let mut encoder = RecordEncoder::default();
    let first = encoder.encode(&record);
    let second = encoder.encode(&record);
    assert_eq!(first.len() - second.len(), 2 + key.proxy_id.len() + 8 - 4, "full key, then a u32 index");
    let mut file = header(1).to_vec();
    file.extend(first);
    file.extend(second);
    let scan = scan(&file).expect("valid");
    assert_eq!(scan.records.len(), 2);
    assert_eq!(scan.records[1].workers, vec![(key, *aggregate.worker(&scan.records[0].workers[0].0).expect("known"))]);
}

#[test]
fn replay_plans_start_at_the_snapshot_and_refuse_gaps() {
    assert_eq!(plan_replay(None, &[]), Ok(vec![]), "fresh");
    assert_eq!(plan_replay(None, &[1, 2]), Ok(vec![1, 2]), "crashed before the first snapshot");
    assert_eq!(plan_replay(Some(3), &[1, 2, 3]), Ok(vec![3]), "older files are stale");
    assert_eq!(plan_replay(Some(3), &[3, 4]), Ok(vec![3, 4]), "crashed during a snapshot");
    assert!(plan_replay(Some(3), &[2]).expect_err("missing").contains("generation 3"));
    assert!(plan_replay(Some(3), &[3, 5]).expect_err("gap").contains("generation 4"));
    assert!(plan_replay(None, &[2]).expect_err("first file missing").contains("generation 1"));
}

#[test]
fn files_are_created_appended_listed_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal_dir = JournalDir::new(dir.path());
    let mut writer = journal_dir.create(4).expect("create");
    journal_dir.create(5).expect("create");
    let history = random_history(3, 40);
    let records: Vec<CommitRecord> = scan(&history.file).expect("valid").records;
    for record in &records {
        writer.append(record).expect("append");
    }
    assert_eq!(journal_dir.generations().expect("list"), vec![4, 5]);
    let bytes = std::fs::read(journal_dir.path(4)).expect("read");
    assert_eq!(bytes.len() as u64, PREALLOCATE_BYTES, "zeros written ahead");
    let scanned = scan(&bytes).expect("valid");
    assert_eq!(scanned.valid_bytes as u64, writer.len_bytes());
    assert_eq!(scanned.generation, 4);
    assert_eq!(replay(&history.snapshot, scanned.records), replay(&history.snapshot, records));
    journal_dir.remove_before(5);
    assert_eq!(journal_dir.generations().expect("list"), vec![5]);
}

#[test]
fn zeros_written_ahead_end_the_journal_but_a_record_after_them_is_an_error() {
    let history = random_history(13, 60);
    let mut bytes = history.file.clone();
    bytes.resize(bytes.len() + 4096, 0);
    let scanned = scan(&bytes).expect("zeros after the records");
    assert_eq!((scanned.records.len(), scanned.valid_bytes), (history.record_offsets.len(), history.file.len()));
    // A torn record in the zeros is a torn tail too.
    let last = history.record_offsets[history.record_offsets.len() - 1];
    bytes[history.file.len()..history.file.len() + 30].copy_from_slice(&history.file[last..last + 30]);
    assert_eq!(scan(&bytes).expect("torn").valid_bytes, history.file.len());
    // A whole valid record past a gap of zeros is not a tail.
    let mut gapped = history.file[..last].to_vec();
    gapped.resize(last + 64, 0);
    gapped.extend_from_slice(&history.file[last..]);
    assert_eq!(scan(&gapped).expect_err("valid record after the gap").offset, last);
}

#[test]
fn a_stray_copy_of_an_older_record_is_an_error() {
    let history = random_history(11, 60);
    let first = history.record_offsets[0];
    let second = history.record_offsets[1];
    let mut bytes = history.file.clone();
    bytes.extend_from_slice(&history.file[first..second]);
    let corrupt = scan(&bytes).expect_err("out of order");
    assert_eq!(corrupt.offset, history.file.len());
    assert!(corrupt.message.contains("record number 0"), "{}", corrupt.message);
}
