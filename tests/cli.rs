//! The `meshguard validate` command, run as a user's CI would run it.

use std::process::Command;

fn validate(json: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("config-{}.json", json.len()));
    std::fs::write(&file, json).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_valid_configuration_passes() {
    let (ok, stdout, _) = validate(
        r#"{"rules": [{"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true}]}"#,
    );
    assert!(ok);
    assert!(
        stdout.contains("ok (0 providers, 0 rate limits, 1 rules)"),
        "{stdout}"
    );
}

#[test]
fn a_bad_configuration_fails_with_the_filters_path_and_reason() {
    let (ok, _, stderr) = validate(
        r#"{"providers": {"corp": {"issuer": "i", "clock_skew": "1 sec", "local_jwks": {"inline": "{}"}}}}"#,
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            r#"configuration refused: providers.corp.clock_skew: invalid duration "1 sec""#
        ),
        "{stderr}"
    );
}

#[test]
fn no_file_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
