//! The BigQuery sink with no static token authenticates with a service-account key file named
//! by `GOOGLE_APPLICATION_CREDENTIALS` (an RSA key made here with the `openssl` CLI, its
//! `token_uri` pointing at a local stand-in), through real RabbitMQ: the signed JWT grant is
//! exchanged for a token, rows land with it, and a 401 makes it fetch another.
//!
//! The variable is process-wide, so this binary holds one test, which sets it first.

mod bigquery_support;
mod common;

use actix_web::web;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bigquery_support::{Google, assert_stored_once, post_event};
use cio_gateway::sandbox::{self, SandboxConfig};
use common::TestVhost;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn decode(part: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(part).expect("base64url")
}

#[actix_rt::test]
async fn a_service_account_key_file_is_exchanged_for_tokens() {
    common::init_test_logging();
    let google = web::Data::new(Google::default());
    let (server, addr) = bigquery_support::bind(google.clone());
    actix_rt::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    openssl(
        keys,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ],
    );
    openssl(
        keys,
        &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
    );
    let token_uri = format!("http://{addr}/token");
    let email = "cio-gateway@proj.iam.gserviceaccount.com";
    let credentials = json!({
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "key-1",
        "private_key": std::fs::read_to_string(keys.join("key.pem")).unwrap(),
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    });
    let path = keys.join("credentials.json");
    std::fs::write(&path, credentials.to_string()).unwrap();
    // SAFETY: the only test of this binary, before anything it starts reads the environment.
    unsafe {
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &path);
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS_JSON");
        // Never the metadata server: a key file wins.
        std::env::set_var("GCE_METADATA_HOST", "127.0.0.1:9");
    }

    let vhost = TestVhost::new("bq-keyfile");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let gateway = bigquery_support::start_gateway(&vhost, &sandbox, dir.path(), &addr).await;

    let first = vec![post_event(&gateway).await, post_event(&gateway).await];
    assert_stored_once(&google, &first).await;
    assert_eq!(google.issued(), 1);

    // A refused token: the retry exchanges the key for a new one.
    google.revoke_all();
    let second = vec![post_event(&gateway).await];
    assert_stored_once(&google, &second).await;
    assert_eq!(google.issued(), 2);
    assert_eq!(google.unauthorized.load(Ordering::SeqCst), 1);

    // Each grant is a JWT signed with the key: RS256, the key id, the account, the scope.
    let forms = google.forms.lock().clone();
    assert_eq!(forms.len(), 2);
    for form in &forms {
        assert_eq!(
            form["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        let parts: Vec<&str> = form["assertion"].split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "key-1");
        assert_eq!(claims["iss"], email);
        assert_eq!(claims["aud"], token_uri.as_str());
        assert_eq!(
            claims["scope"],
            "https://www.googleapis.com/auth/bigquery.insertdata"
        );
        assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
        std::fs::write(
            keys.join("signed.txt"),
            format!("{}.{}", parts[0], parts[1]),
        )
        .unwrap();
        std::fs::write(keys.join("signature.bin"), decode(parts[2])).unwrap();
        let verified = openssl(
            keys,
            &[
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "signature.bin",
                "signed.txt",
            ],
        );
        assert!(verified.contains("Verified OK"), "{verified}");
    }
    assert_eq!(google.token_requests.load(Ordering::SeqCst), 2);
    gateway.shutdown().await;
}
