//! Config errors and start-up of the real binary.

use cdn_core::testing::{assert_config_ok, assert_exit_2_naming};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cache-node"))
}

fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["init-tls", "--dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_key() {
    let dir = tls_dir();
    let out = bin()
        .args(["--capacity", "lots", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert_exit_2_naming(out, "--capacity");
    let out = bin()
        .args(["--origin", "ftp://x", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert_exit_2_naming(out, "origin");
}

#[test]
fn a_bad_config_file_value_exits_2_naming_the_key() {
    let dir = tls_dir();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "id = \"n1\"\ncapacity = \"a lot\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "capacity");
    std::fs::write(&file, "eviction = \"fifo\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "eviction");
    std::fs::write(&file, "listen = \"not an address\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "listen");
    // Durations are written with a unit; a bad one, or a key of the old `_ms` form, is named.
    std::fs::write(&file, "purge_timeout = \"soon\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "`purge_timeout`");
    std::fs::write(&file, "probe_interval_ms = 500\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "probe_interval_ms");
    let out = bin()
        .args(["--check-config", "--tls-dir", "/nonexistent/tls"])
        .output()
        .unwrap();
    assert_exit_2_naming(out, "tls_dir");
}

#[test]
fn the_binary_starts_and_serves_its_admin_api_then_stops_on_sigterm() {
    let dir = tls_dir();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let mut child = bin()
        .args([
            "--id",
            "proc-node",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            &admin_addr.to_string(),
            "--tls-dir",
        ])
        .arg(dir.path().join("tls"))
        .env("CDN_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(admin_addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(Instant::now() < deadline, "admin port never opened");
        assert!(child.try_wait().unwrap().is_none(), "node exited early");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"id\": \"proc-node\""), "{status}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "clean exit on SIGTERM: {:?}",
        out.status
    );
    // CDN_LOG_FORMAT=json: every log line is one JSON object.
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |msg: &str| {
        lines
            .iter()
            .any(|l| l["fields"]["message"] == msg && l["level"] == "INFO")
    };
    assert!(said("cache node started"), "{logs}");
    assert!(said("left the cluster"), "{logs}");
}

#[test]
fn an_unknown_log_format_exits_2_naming_it() {
    let out = bin()
        .arg("--check-config")
        .env("CDN_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_exit_2_naming(out, "CDN_LOG_FORMAT");
}

#[test]
fn the_commented_example_config_is_valid() {
    let dir = tls_dir();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cache-node.toml");
    let out = bin()
        .args(["--config", example, "--check-config", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert_config_ok(out);
}

#[test]
fn a_wildcard_listen_address_needs_an_advertised_one() {
    let dir = tls_dir();
    let out = bin()
        .args(["--listen", "0.0.0.0:0", "--check-config", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert_exit_2_naming(out, "advertise");
    let out = bin()
        .args([
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "127.0.0.1:4433",
            "--check-config",
            "--tls-dir",
        ])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert_config_ok(out);
}

#[test]
fn the_environment_sets_config_keys_and_a_bad_one_exits_2_naming_it() {
    let dir = tls_dir();
    let check = |flags: &[&str], var: &str, value: &str| {
        bin()
            .arg("--check-config")
            .args(flags)
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .env(var, value)
            .output()
            .unwrap()
    };
    assert_exit_2_naming(check(&[], "CDN_PURGE_TIMEOUT", "soon"), "CDN_PURGE_TIMEOUT");
    let out = check(&[], "CDN_PURGE_TIMEOUT", "2s");
    assert_config_ok(out);
    // A valid value is taken; a flag still wins over it.
    assert_exit_2_naming(check(&[], "CDN_CAPACITY", "0"), "capacity");
    let out = check(&["--capacity", "64MiB"], "CDN_CAPACITY", "0");
    assert_config_ok(out);
}
