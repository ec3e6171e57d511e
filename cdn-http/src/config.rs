//! Config loading shared by every binary: TOML with errors that name the key, the
//! environment over the file, byte sizes with suffixes, and the convention that a bad value
//! prints one line and exits 2.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A bad config value: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `capacity` or `store.policy`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Prints the error as one line on stderr and exits with status 2.
    pub fn exit(&self) -> ! {
        eprintln!("error: {self}");
        std::process::exit(2)
    }
}

/// Reads and parses a TOML config file (see [`parse_toml`]); errors name the offending key.
pub fn load_toml<T: Serialize + DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("{}: {e}", path.display())))?;
    parse_toml(&text)
}

/// Parses TOML text over `T::default()`; errors name the offending key.
///
/// The text is read as a table first and merged over the defaults, so a key the file leaves
/// out keeps `T::default()`'s value, also inside sections flattened into `T`
/// (`#[serde(flatten)]`), whose defaults each binary chooses. A key `T` does not serialize to
/// is refused here, because serde's `deny_unknown_fields` does nothing once a struct flattens
/// another.
pub fn parse_toml<T: Serialize + DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    let file: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::new("<file>", one_line(&e.to_string())))?;
    let defaults = T::default();
    // JSON rather than TOML: it keeps unset `Option` keys (as null), TOML drops them.
    let known = serde_json::to_value(&defaults)
        .map_err(|e| ConfigError::new("<defaults>", e.to_string()))?;
    check_keys(&file, &known, "")?;
    let base = match toml::Value::try_from(&defaults) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) => toml::Table::new(),
        Err(e) => return Err(ConfigError::new("<defaults>", e.to_string())),
    };
    over(base, file)
}

/// Deserializes `top`'s keys put over `base`'s (a complete, valid config).
fn over<T: DeserializeOwned>(base: toml::Table, top: toml::Table) -> Result<T, ConfigError> {
    let mut merged = base.clone();
    merge(&mut merged, top.clone());
    deserialize(merged).map_err(|e| {
        if e.key != "<file>" {
            return e;
        }
        // A value inside a flattened section: serde reports no path for it, so find the key
        // by trying `top`'s keys one at a time over `base`.
        top.iter()
            .find_map(|(key, value)| {
                let mut one = base.clone();
                merge(
                    &mut one,
                    toml::Table::from_iter([(key.clone(), value.clone())]),
                );
                deserialize::<T>(one).err().map(|e| match e.key.as_str() {
                    "<file>" => ConfigError::new(key.clone(), e.message),
                    _ => e,
                })
            })
            .unwrap_or(e)
    })
}

fn deserialize<T: DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(table).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "<file>".to_string()
        } else {
            key
        };
        ConfigError::new(key, one_line(e.into_inner().message()))
    })
}

/// Refuses the first key of `file` that `known` (the serialized defaults) lacks, naming its
/// dotted path. Tables are followed only where the defaults have a table too: elsewhere serde's
/// own checks apply.
fn check_keys(
    file: &toml::Table,
    known: &serde_json::Value,
    prefix: &str,
) -> Result<(), ConfigError> {
    let Some(known) = known.as_object() else {
        return Ok(());
    };
    for (key, value) in file {
        let path = format!("{prefix}{key}");
        let Some(k) = known.get(key) else {
            // Durations lost their unit suffix: point a config written for the old keys at
            // the new one.
            let renamed = ["_ms", "_secs"]
                .iter()
                .find_map(|s| key.strip_suffix(s))
                .filter(|k| known.contains_key(*k));
            return Err(ConfigError::new(
                path,
                match renamed {
                    Some(k) => {
                        format!("unknown key: now `{k}`, a duration such as \"500ms\" or \"2s\"")
                    }
                    None => "unknown key".to_string(),
                },
            ));
        };
        if let toml::Value::Table(t) = value {
            check_keys(t, k, &format!("{path}."))?;
        }
    }
    Ok(())
}

/// Puts `top`'s values over `base`'s, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Overrides config keys from the environment: `CDN_<KEY>` (upper case) for every key of
/// `config`, including unset optional ones. Strings are taken as given (durations too, e.g.
/// `CDN_PURGE_TIMEOUT=2s`), lists as comma-separated items, everything else as a TOML value.
/// Order of precedence in the binaries: file, then environment, then flags. A bad value names
/// the variable.
pub fn apply_env<T: Serialize + DeserializeOwned>(config: T) -> Result<T, ConfigError> {
    apply_vars(config, |name| std::env::var(name).ok())
}

fn apply_vars<T: Serialize + DeserializeOwned>(
    config: T,
    var: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let Ok(toml::Value::Table(table)) = toml::Value::try_from(&config) else {
        return Ok(config);
    };
    // Every key, unset optional ones too (they serialize to JSON null, and not at all to TOML).
    let keys: Vec<String> = match serde_json::to_value(&config) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => table.keys().cloned().collect(),
    };
    let mut from_env = toml::Table::new();
    let mut names = Vec::new();
    for key in keys {
        let name = format!("CDN_{}", key.to_uppercase());
        let Some(raw) = var(&name) else { continue };
        let value = match table.get(&key) {
            Some(toml::Value::Array(_)) if !raw.trim_start().starts_with('[') => {
                toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                )
            }
            Some(toml::Value::String(_)) | None => toml::Value::String(raw),
            Some(_) => toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw)),
        };
        from_env.insert(key.clone(), value);
        names.push((key, name));
    }
    if from_env.is_empty() {
        return Ok(config);
    }
    over(table, from_env).map_err(|e| match names.iter().find(|(k, _)| *k == e.key) {
        Some((_, name)) => ConfigError::new(name.clone(), e.message),
        None => e,
    })
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '|' || c == ' ' || c == '^')
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A byte count, written in config and flags as a number or with a suffix (`64MiB`, `1GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(ByteSize(n));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| format!("`{s}` is not a byte size (e.g. 1048576, 512KiB, 64MiB, 1GiB)"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Parses the command line; a bad flag prints its first error line and exits 2 (help and
/// version print in full and exit 0), matching how bad config values are reported.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit()
            }
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{line}");
            std::process::exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct EnvSample {
        name: String,
        size: ByteSize,
        count: u64,
        on: bool,
        seeds: Vec<String>,
        token: Option<String>,
    }

    impl Default for EnvSample {
        fn default() -> Self {
            Self {
                name: "a".into(),
                size: ByteSize(1024),
                count: 1,
                on: false,
                seeds: vec![],
                token: None,
            }
        }
    }

    #[test]
    fn the_environment_overrides_every_key_and_bad_values_name_the_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let got = apply_vars(
            EnvSample::default(),
            env(&[
                ("CDN_NAME", "node 7"),
                ("CDN_SIZE", "64MiB"),
                ("CDN_COUNT", "12"),
                ("CDN_ON", "true"),
                ("CDN_SEEDS", "10.0.0.1:4433, nodes.cdn:4433"),
                ("CDN_TOKEN", "s3cret"),
                ("CDN_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            EnvSample {
                name: "node 7".into(),
                size: ByteSize(64 << 20),
                count: 12,
                on: true,
                seeds: vec!["10.0.0.1:4433".into(), "nodes.cdn:4433".into()],
                token: Some("s3cret".into()),
            }
        );
        let err = apply_vars(EnvSample::default(), env(&[("CDN_COUNT", "many")])).unwrap_err();
        assert_eq!(err.key, "CDN_COUNT");
        let err = apply_vars(EnvSample::default(), env(&[("CDN_SIZE", "lots")])).unwrap_err();
        assert_eq!(err.key, "CDN_SIZE");
        // Nothing set: the config comes back as it was.
        assert_eq!(
            apply_vars(EnvSample::default(), env(&[])).unwrap(),
            EnvSample::default()
        );
    }

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        capacity: Option<ByteSize>,
        inner: Inner,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn sizes_parse_with_and_without_suffix() {
        assert_eq!("1024".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("1 KiB".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn errors_name_the_key_on_one_line() {
        let e = parse_toml::<Sample>("capacity = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "capacity");
        assert!(e.message.contains("lots"), "{e}");
        let e = parse_toml::<Sample>("[inner]\nport = 70000\n").unwrap_err();
        assert_eq!(e.key, "inner.port");
        let e = parse_toml::<Sample>("bogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = parse_toml::<Sample>("[inner]\nbogus = 1\n").unwrap_err();
        assert_eq!(e.key, "inner.bogus");
        let e = parse_toml::<Sample>("capacity = [\n").unwrap_err();
        assert_eq!(e.key, "<file>");
        assert!(!e.to_string().contains('\n'), "{e}");
        let ok = parse_toml::<Sample>("capacity = 2048\n").unwrap();
        assert_eq!(ok.capacity, Some(ByteSize(2048)));
    }

    /// A section two binaries share, whose defaults each of them chooses (so it has no
    /// `Default` of its own).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Shared {
        id: String,
        size: ByteSize,
        token: Option<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Tier {
        #[serde(flatten)]
        shared: Shared,
        count: u64,
    }

    impl Default for Tier {
        fn default() -> Self {
            Self {
                shared: Shared {
                    id: "tier-0".into(),
                    size: ByteSize(64),
                    token: None,
                },
                count: 3,
            }
        }
    }

    #[test]
    fn flattened_sections_keep_the_binarys_defaults_refuse_unknown_keys_and_name_bad_ones() {
        let t = parse_toml::<Tier>("count = 4\ntoken = \"t\"\n").unwrap();
        assert_eq!(t.shared.id, "tier-0");
        assert_eq!(t.shared.size, ByteSize(64));
        assert_eq!(t.shared.token.as_deref(), Some("t"));
        assert_eq!(t.count, 4);
        assert_eq!(parse_toml::<Tier>("").unwrap(), Tier::default());
        let e = parse_toml::<Tier>("no_such_key = 1\n").unwrap_err();
        assert_eq!(e.key, "no_such_key");
        assert!(!e.to_string().contains('\n'));
        // A value inside the flattened section names its key, not the file.
        let e = parse_toml::<Tier>("count = 1\nsize = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "size", "{e}");
        assert!(e.message.contains("lots"), "{e}");
        // A key that lost its unit suffix says what it is called now.
        let e = parse_toml::<Tier>("count_ms = 5\n").unwrap_err();
        assert_eq!(e.key, "count_ms");
        assert!(e.message.contains("`count`"), "{e}");
        // The environment reaches the section's keys, unset optional ones included.
        let env = |name: &str| match name {
            "CDN_TOKEN" => Some("s3cret".to_string()),
            "CDN_SIZE" => Some("1KiB".to_string()),
            _ => None,
        };
        let t = apply_vars(Tier::default(), env).unwrap();
        assert_eq!(t.shared.token.as_deref(), Some("s3cret"));
        assert_eq!(t.shared.size, ByteSize(1024));
        let e = apply_vars(Tier::default(), |n: &str| {
            (n == "CDN_SIZE").then(|| "lots".to_string())
        })
        .unwrap_err();
        assert_eq!(e.key, "CDN_SIZE");
    }
}
