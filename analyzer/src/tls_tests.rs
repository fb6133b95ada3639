//! HTTPS over a real socket: a self-signed certificate made here (rcgen), a
//! client that trusts only it (hyper-rustls), the same `serve` main runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use canary_protocol::{Report, ReportHeader, SyncResponse, VersionStats};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::Config;

const SRE: &str = "Bearer sre-secret";

/// Writes a self-signed certificate for 127.0.0.1 and its key as PEM.
fn self_signed(dir: &Path, name: &str) -> (TlsFiles, CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("certificate");
    let files = TlsFiles { cert_file: dir.join(format!("{name}.crt")), key_file: dir.join(format!("{name}.key")) };
    std::fs::write(&files.cert_file, certified.cert.pem()).expect("write cert");
    std::fs::write(&files.key_file, certified.signing_key.serialize_pem()).expect("write key");
    (files, certified.cert.der().clone())
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that trusts `root` and nothing else, and speaks only https.
fn client_trusting(root: CertificateDer<'static>) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector =
        HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn call(
    client: &HttpsClient,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered in time")
        .expect("https exchange");
    let status = response.status();
    (status, response.into_body().collect().await.expect("body").to_bytes())
}

/// A report that has applied `weights_version` and may be held 30 s.
fn held_report(weights_version: u64) -> Vec<u8> {
    let report = Report {
        header: ReportHeader {
            proxy_id: "envoy-tls".into(),
            worker_id: 1,
            seq: 1,
            weights_version,
            counts_weights_version: weights_version,
            max_hold_ms: 30_000,
        },
        versions: [VersionStats::default().to_delta(), VersionStats::default().to_delta()],
    };
    let mut bytes = Vec::new();
    report.encode(&mut bytes);
    bytes
}

#[tokio::test]
async fn https_serves_the_api_and_shutdown_still_releases_held_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, root) = self_signed(dir.path(), "analyzer");
    let mut config = Config::with_state_dir(dir.path().join("state"));
    config.sre_token = Some("sre-secret".into());
    config.tls = Some(files.clone());
    let tls = server_config(&files).expect("valid certificate and key");
    let state = AppState::open(config).expect("state opens");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Some(tls), state.clone(), async move {
        let _ = stopped.await;
    }));

    let client = client_trusting(root);
    let base = format!("https://{address}");
    let (status, body) = call(&client, Method::GET, &format!("{base}/healthz"), None, Vec::new()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let weight = br#"{"canary_percent": 25}"#.to_vec();
    let (status, body) = call(&client, Method::PUT, &format!("{base}/v1/rollout/weight"), None, weight.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    let (status, body) = call(&client, Method::PUT, &format!("{base}/v1/rollout/weight"), Some(SRE), weight).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let changed: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((changed["canary_weight_bp"].as_u64(), changed["weights_version"].as_u64()), (Some(2_500), Some(2)));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(address).await.expect("connect");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {:?}", String::from_utf8_lossy(&answer));

    // A sync that has the current weights is held; shutdown answers it.
    let held = {
        let client = client.clone();
        let url = format!("{base}/v1/filter/sync");
        tokio::spawn(async move { call(&client, Method::POST, &url, None, held_report(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the sync is held");
    stop.send(()).expect("server running");
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("joins");
    assert_eq!(status, StatusCode::OK);
    let response = SyncResponse::decode(&body).expect("sync response");
    assert_eq!((response.acked_seq, response.weights.weights_version), (1, 2));
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("drains").expect("joins").expect("served");
    state.shutdown().await;
}

#[test]
fn bad_tls_files_are_refused_naming_the_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, _) = self_signed(dir.path(), "good");
    let (other, _) = self_signed(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").expect("write");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.path().join("missing.pem");
    let files = |cert: &Path, key: &Path| TlsFiles { cert_file: cert.to_owned(), key_file: key.to_owned() };
    // (files, field, words)
    let cases = [
        (files(&missing, &good.key_file), "tls_cert_file", "cannot read"),
        (files(&garbage, &good.key_file), "tls_cert_file", "not valid PEM"),
        (files(&empty, &good.key_file), "tls_cert_file", "no CERTIFICATE"),
        (files(&good.key_file, &good.key_file), "tls_cert_file", "no CERTIFICATE"),
        (files(&good.cert_file, &missing), "tls_key_file", "cannot read"),
        (files(&good.cert_file, &good.cert_file), "tls_key_file", "no PEM block with a private key"),
        (files(&good.cert_file, &other.key_file), "tls_key_file", "cannot serve"),
    ];
    for (files, field, words) in cases {
        let error = server_config(&files).expect_err(words);
        let message = error.to_string();
        assert_eq!(error.field(), Some(field), "{message}");
        assert!(message.contains(words), "{message} lacks {words:?}");
    }
    server_config(&good).expect("the good pair works");
}
