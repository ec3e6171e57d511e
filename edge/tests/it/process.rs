//! Config errors of the real binary.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

fn one_line_exit_2(out: std::process::Output, key: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(key), "names `{key}`: {err}");
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["--replicas", "many"]).output().unwrap();
    one_line_exit_2(out, "--replicas");
    let out = bin()
        .args(["--replicas", "0", "--tls-dir", "/x"])
        .output()
        .unwrap();
    one_line_exit_2(out, "replicas");
    let out = bin()
        .args(["--seed", "nowhere", "--tls-dir", "/x"])
        .output()
        .unwrap();
    one_line_exit_2(out, "seeds");
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "capacity = -5\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    one_line_exit_2(out, "capacity");
    std::fs::write(&file, "node_connect_timeout = \"0s\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    one_line_exit_2(out, "`node_connect_timeout`");
    // A shared key, flattened into the edge's config, is named too.
    std::fs::write(&file, "purge_timeout = 5000\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    one_line_exit_2(out, "`purge_timeout`");
    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    one_line_exit_2(out, "no_such_key");
}

#[test]
fn the_commented_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    cdn_core::tls::init_dir(&tls).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/edge.toml");
    let out = bin()
        .args(["--config", example, "--check-config", "--tls-dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
}
