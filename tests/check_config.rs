//! `cio-gateway check-config` (issue 23, item 7): every invalid key in one run, and the
//! effective values printed as a TOML file or JSON that parse.

use std::process::{Command, Output};

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cio-gateway"));
    command.arg("check-config").args(args);
    // The crate's own config/ directory, and nothing from the caller's environment.
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEWAY") || name.starts_with("CUSTOMERIO_") || name == "AMQP_URL" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("cio-gateway runs")
}

#[test]
fn every_invalid_key_is_reported_in_one_run() {
    let out = check_config(
        &[],
        &[
            ("GATEWAY__BROKER__PARTITONS", "8"),
            ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "many"),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "0"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "broker.partitons",
        "delivery.max_attempts",
        "customerio.track_rps",
    ] {
        assert!(stderr.contains(&format!("`{key}`")), "{key} in {stderr}");
    }
    assert!(stderr.contains("3 problems"), "{stderr}");
}

#[test]
fn the_effective_values_print_as_toml_or_json_that_parse() {
    let env = [
        ("GATEWAY__BROKER__PARTITIONS", "12"),
        ("CUSTOMERIO_API_KEY", "topsecret"),
    ];
    let toml_out = check_config(&["--format", "toml"], &env);
    assert!(toml_out.status.success(), "{toml_out:?}");
    let toml_text = String::from_utf8(toml_out.stdout).unwrap();
    let table: toml::Table = toml_text.parse().expect("valid TOML");
    assert_eq!(table["broker"]["partitions"].as_integer(), Some(12));
    assert_eq!(table["customerio"]["api_key"].as_str(), Some("***"));

    let json_out = check_config(&["--format", "json"], &env);
    assert!(json_out.status.success(), "{json_out:?}");
    let json: serde_json::Value = serde_json::from_slice(&json_out.stdout).expect("valid JSON");
    assert_eq!(json["broker"]["partitions"], 12);
    assert!(!String::from_utf8_lossy(&json_out.stdout).contains("topsecret"));

    // TOML is the default.
    let default_out = check_config(&[], &env);
    assert_eq!(String::from_utf8(default_out.stdout).unwrap(), toml_text);
}
