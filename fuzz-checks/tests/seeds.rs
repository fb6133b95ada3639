//! Writes the valid half of the seed corpus from the real encoders, so the
//! seeds stay in step with the wire formats. Run after a format change:
//!
//! ```text
//! cargo test -p canary-fuzz-checks --test seeds -- --ignored
//! ```
//!
//! It (re)writes `fuzz/corpus/<target>/seed-*`; other files there (inputs
//! libFuzzer found, crash reproducers) are left alone. The invalid seeds are
//! byte-level damage of the valid ones, made here too.

use std::path::PathBuf;

use canary_analyzer::aggregate::WeightsRecord;
use canary_analyzer::weights_file;
use canary_protocol::batch::encode_batch;
use canary_protocol::{
    BatchAck, CanaryWeight, Report, ReportHeader, StatusClass, SyncResponse, VersionStats, Weights, WorkerAck,
};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, data).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

fn report(requests: &[(StatusClass, u64)], canary: &[(StatusClass, u64)], seq: u64) -> Vec<u8> {
    worker_report(0x1234_5678_9abc, requests, canary, seq)
}

fn worker_report(worker_id: u64, requests: &[(StatusClass, u64)], canary: &[(StatusClass, u64)], seq: u64) -> Vec<u8> {
    let stats = |recorded: &[(StatusClass, u64)]| {
        let mut stats = VersionStats::default();
        for &(class, latency_us) in recorded {
            stats.record(class, latency_us);
        }
        stats.to_delta()
    };
    let report = Report {
        header: ReportHeader {
            proxy_id: "envoy-1.default".to_owned(),
            worker_id,
            seq,
            weights_version: 7,
            counts_weights_version: 6,
            max_hold_ms: 1_000,
        },
        versions: [stats(requests), stats(canary)],
    };
    let mut bytes = Vec::new();
    report.encode(&mut bytes);
    bytes
}

#[test]
#[ignore = "writes the seed corpus; run by hand after a format change"]
fn write_seed_corpus() {
    use StatusClass::*;

    // report_decode
    let empty = report(&[], &[], 1);
    let typical = report(
        &[(Success, 900), (Success, 1_200), (ClientError, 300), (Redirect, 40)],
        &[(Success, 1_100), (ServerError, 50_000), (NoResponse, 30_000_000)],
        42,
    );
    let extremes = report(&[(Success, 0), (Success, u64::MAX)], &[(NoResponse, 255), (Success, 256)], u64::MAX);
    write("report_decode", "empty", &empty);
    write("report_decode", "typical", &typical);
    write("report_decode", "extremes", &extremes);
    write("report_decode", "truncated", &typical[..typical.len() - 3]);
    write("report_decode", "trailing-byte", &[typical.as_slice(), &[0]].concat());
    let mut bad_version = typical.clone();
    bad_version[2] = 2;
    write("report_decode", "format-version-2", &bad_version);
    let mut bad_layout = typical.clone();
    bad_layout[3] = 6;
    write("report_decode", "layout-mismatch", &bad_layout);
    write("report_decode", "seq-zero", &report(&[(Success, 1)], &[], 0));
    // The last byte is the canary's last bucket count: 2 instead of 1 makes
    // the histogram disagree with the request count.
    let mut mismatch = typical.clone();
    if let Some(last) = mismatch.last_mut() {
        *last += 1;
    }
    write("report_decode", "count-mismatch", &mismatch);

    // weights_decode: sync responses, weights records, and pairs of records
    // (the check lays the two halves of an input out as the two slots).
    let sync = |acked_seq, weights_version, bp| {
        SyncResponse {
            acked_seq,
            weights: Weights { weights_version, canary_weight: CanaryWeight::from_bp(bp).expect("in range") },
        }
        .to_bytes()
    };
    write("weights_decode", "sync-typical", &sync(42, 7, 1_000));
    write("weights_decode", "sync-full", &sync(u64::MAX, u64::MAX, 10_000));
    write("weights_decode", "sync-weight-over", b"CW\x01\x01\x01\x91\x4e");
    write("weights_decode", "sync-trailing", &[sync(1, 1, 0).as_slice(), &[0]].concat());
    let record = |weights_version, bp, changed_at_unix_ms| {
        weights_file::encode(&WeightsRecord {
            weights: Weights { weights_version, canary_weight: CanaryWeight::from_bp(bp).expect("in range") },
            changed_at_unix_ms,
        })
    };
    let older = record(3, 2_500, 1_764_000_000_000);
    let newer = record(4, 0, 1_764_000_001_000);
    write("weights_decode", "record", &older);
    write("weights_decode", "two-records", &[older, newer].concat());
    write("weights_decode", "two-records-same-version", &[older, record(3, 500, 1)].concat());
    let mut torn = newer;
    torn[10] ^= 0xff;
    write("weights_decode", "newer-torn", &[older, torn].concat());
    write("weights_decode", "record-truncated", &older[..20]);
    write("weights_decode", "empty-slot", &[0u8; 32]);

    // filter_config
    let configs: &[(&str, &str)] = &[
        ("minimal", r#"{"analyzer_cluster":"canary-analyzer"}"#),
        (
            "full",
            r#"{"analyzer_cluster":"outbound|9190||canary-analyzer.ns.svc.cluster.local",
                "analyzer_authority":"canary-analyzer:9190","analyzer_token":"s3cret",
                "report_interval_ms":250,"route_header":"X-Canary-Version",
                "sticky":{"cookie":"session"},"initial_canary_weight_bp":1000,"proxy_id":"envoy-1"}"#,
        ),
        ("sticky-header", r#"{"analyzer_cluster":"a","sticky":{"header":"x-user-id"}}"#),
        ("unknown-field", r#"{"analyzer_cluster":"a","weights":50}"#),
        ("bad-interval", r#"{"analyzer_cluster":"a","report_interval_ms":5}"#),
        ("bad-type", r#"{"analyzer_cluster":"a","report_interval_ms":"1s"}"#),
        ("array", r#"[{"analyzer_cluster":"a"}]"#),
        ("weight-over", r#"{"analyzer_cluster":"a","initial_canary_weight_bp":10001}"#),
        ("truncated", r#"{"analyzer_cluster":"a","sticky":{"#),
        ("trailing-garbage", r#"{"analyzer_cluster":"a"} x"#),
        (
            "override",
            r#"{"analyzer_cluster":"a","override":{"header":"x-canary","canary_value":"always",
                "stable_value":"never","source_cidrs":["10.0.0.0/8","::1/128","192.168.1.7"]}}"#,
        ),
        (
            "override-bad-cidr",
            r#"{"analyzer_cluster":"a","override":{"header":"x-canary","canary_value":"always","source_cidrs":["10.0.0.0/33"]}}"#,
        ),
        ("override-no-value", r#"{"analyzer_cluster":"a","override":{"header":"x-canary"}}"#),
    ];
    for (name, text) in configs {
        write("filter_config", name, text.as_bytes());
    }

    // rollout_spec: first byte 0 = JSON, 1 = YAML, then the body.
    let rollouts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../envoy-config/rollouts");
    for name in ["fast-demo", "manual", "blue-green", "default-canary"] {
        let path = rollouts.join(format!("{name}.yaml"));
        let text = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        write("rollout_spec", &format!("{name}-yaml"), &[&[1u8], text.as_slice()].concat());
    }
    let specs: &[(&str, u8, &str)] = &[
        (
            "full-json",
            0,
            r#"{"name":"pay","canaryVersion":"v2","stableVersion":"v1","failurePolicy":"pause",
                "analysis":{"alpha":0.02,"minCanaryRequests":50,
                  "guards":{"maxErrorRate":0.1,"maxErrorRateFor":"30s","maxP95":"1.5s"},
                  "gates":{"maxP95":"250ms","requireHealthyHosts":false}},
                "steps":[{"setWeight":0.5},{"pause":{"duration":"90s"}},{"pause":{"untilApproved":true}},
                         {"setWeight":100}]}"#,
        ),
        ("blue-green-json", 0, r#"{"name":"bg","canaryVersion":"v2","strategy":"blueGreen"}"#),
        ("weight-over-yaml", 1, "name: x\ncanaryVersion: v2\nsteps:\n  - setWeight: 101\n"),
        ("unknown-key-yaml", 1, "name: x\ncanaryVersion: v2\nstep: []\n"),
        ("anchors-yaml", 1, "name: &n x\ncanaryVersion: *n\nsteps: [{pause: {duration: 1h}}]\n"),
        ("not-a-mapping-json", 0, "[1, 2]"),
        ("syntax-json", 0, r#"{"name": "#),
    ];
    for (name, format, text) in specs {
        write("rollout_spec", name, &[&[*format], text.as_bytes()].concat());
    }

    // batch_decode: report batches framed by the real encoder around the
    // report seeds' bytes, their damage, and batch acknowledgements.
    let batch = |max_hold_ms, reports: &[&[u8]]| {
        let mut bytes = Vec::new();
        encode_batch(max_hold_ms, reports.iter().copied(), &mut bytes);
        bytes
    };
    let worker_2 = worker_report(2, &[(Success, 700), (Success, 650)], &[], 7);
    let worker_3 = worker_report(3, &[(ServerError, 12_000)], &[(Success, 1_500), (Success, 1_600)], 1);
    write("batch_decode", "one-report", &batch(1_000, &[&empty]));
    let three = batch(750, &[&typical, &worker_2, &worker_3]);
    write("batch_decode", "three-reports", &three);
    write("batch_decode", "buckets", &batch(u32::MAX, &[&extremes]));
    write("batch_decode", "count-zero", b"CB\x01\x00\x00");
    write("batch_decode", "count-257", b"CB\x01\x00\x81\x02");
    write("batch_decode", "report-length-zero", b"CB\x01\x00\x01\x00");
    write("batch_decode", "truncated", &three[..three.len() - 3]);
    write("batch_decode", "trailing-byte", &[three.as_slice(), &[0]].concat());
    // The second report has seq 0: the decoder blames report 1.
    write("batch_decode", "bad-second-report", &batch(0, &[&worker_2, &report(&[(Success, 1)], &[], 0)]));
    let ack = |bp, acks: &[(u64, u64)]| {
        BatchAck {
            weights: Weights { weights_version: 7, canary_weight: CanaryWeight::from_bp(bp).expect("in range") },
            acks: acks.iter().map(|&(worker_id, acked_seq)| WorkerAck { worker_id, acked_seq }).collect(),
        }
        .to_bytes()
    };
    write("batch_decode", "ack", &ack(1_000, &[(0x1234_5678_9abc, 42), (2, 7), (3, 1)]));
    write("batch_decode", "ack-none", &ack(10_000, &[]));
    write("batch_decode", "ack-weight-over", b"CA\x01\x01\x91\x4e\x00");
    write("batch_decode", "ack-count-257", b"CA\x01\x01\x00\x81\x02");

    // histogram: the input is read through `arbitrary`, so any bytes are a
    // valid input; a few lengths and patterns give the fuzzer a start.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (index, len) in [8usize, 64, 256, 1024].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        write("histogram", &format!("random-{index}"), &bytes);
    }
    write("histogram", "zeros", &[0u8; 128]);
    write("histogram", "ones", &[0xffu8; 128]);
}
