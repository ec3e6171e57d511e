//! Checks both tiers' tests make of their binaries and example config files. Only with the
//! `test-support` feature, which the tiers enable for their tests alone: nothing here is in a
//! release binary.

use std::process::Output;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Asserts that the example config `text` shows every key of `C` with its default: set to it,
/// or, for a key unset by default, shown commented out (`# key = ...`). `seeds` and `tls_dir`
/// are exempt: those are the two an example must fill in.
pub fn assert_example_shows_every_default<C: Serialize + DeserializeOwned + Default>(text: &str) {
    let example = crate::config::parse_toml::<C>(text).unwrap();
    let (example, default) = (
        serde_json::to_value(example).unwrap(),
        serde_json::to_value(C::default()).unwrap(),
    );
    for (key, want) in default.as_object().unwrap() {
        if key == "seeds" || key == "tls_dir" {
            continue;
        }
        if want.is_null() {
            assert!(text.contains(&format!("# {key} = ")), "`{key}` not shown");
        } else {
            assert!(text.contains(&format!("\n{key} = ")), "`{key}` not set");
            assert_eq!(&example[key], want, "`{key}` is not its default");
        }
    }
}

/// Asserts that a binary refused its config as the convention says: exit status 2 and one
/// line on stderr naming `key`.
pub fn assert_exit_2_naming(out: Output, key: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(key), "names `{key}`: {err}");
}

/// Asserts that a binary ran `--check-config` and accepted its config.
pub fn assert_config_ok(out: Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
}
