//! The `starling` binary as a user runs it: generate-config, configuration
//! errors and their exit codes.

use std::process::Command;

fn starling() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn generate_config_prints_the_commented_defaults() {
    let out = starling().arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[mqtt]") && text.contains("max_queued_messages = 1000"));
    assert!(text.lines().any(|l| l.starts_with('#')), "commented");
    // What it prints is a valid config file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("starling.toml");
    std::fs::write(&path, &text).unwrap();
    let out = starling()
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--mqtt-listen", "127.0.0.1:1", "--set", "mqtt.max_qos=9"])
        .output()
        .unwrap();
    // Only the override is wrong, and the error says which key.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.max_qos"), "{err}");
}

#[test]
fn invalid_configuration_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[listeners]\nmqtt = \"not an address\"\n").unwrap();
    let out = starling().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners.mqtt"));

    std::fs::write(&path, "[mqtt]\nmax_inflight = \"many\"\n").unwrap();
    let out = starling().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_inflight") && err.contains("line 2"), "{err}");

    let out = starling().args(["serve"]).env("STARLING_MQTT_MAX_PACKET_SIZE", "12").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.max_packet_size"), "{err}");

    let out = starling().args(["serve", "--set", "nope.key=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.key"));

    let out = starling().args(["serve", "--config", "/does/not/exist.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/does/not/exist.toml"));
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = starling()
        .args([
            "serve",
            "--mqtt-listen",
            &addr,
            "--ws-listen",
            "off",
            "--http-listen",
            "off",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("listeners.mqtt"), "{err}");
}
