//! Config errors of the real binary.

use cdn_core::testing::{assert_config_ok, assert_exit_2_naming};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["--replicas", "many"]).output().unwrap();
    assert_exit_2_naming(out, "--replicas");
    let out = bin()
        .args(["--replicas", "0", "--tls-dir", "/x"])
        .output()
        .unwrap();
    assert_exit_2_naming(out, "replicas");
    let out = bin()
        .args(["--seed", "nowhere", "--tls-dir", "/x"])
        .output()
        .unwrap();
    assert_exit_2_naming(out, "seeds");
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "capacity = -5\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "capacity");
    std::fs::write(&file, "node_connect_timeout = \"0s\"\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "`node_connect_timeout`");
    // A shared key, flattened into the edge's config, is named too.
    std::fs::write(&file, "purge_timeout = 5000\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "`purge_timeout`");
    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    let out = bin().arg("--config").arg(&file).output().unwrap();
    assert_exit_2_naming(out, "no_such_key");
}

#[test]
fn the_commented_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    cdn_net::tls::init_dir(&tls).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/edge.toml");
    let out = bin()
        .args(["--config", example, "--check-config", "--tls-dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert_config_ok(out);
}
