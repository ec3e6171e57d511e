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

/// Reads and parses a TOML config file; errors name the offending key.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("{}: {e}", path.display())))?;
    parse_toml(&text)
}

/// Parses TOML text; errors name the offending key.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new("<file>", one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "<file>".to_string()
        } else {
            key
        };
        ConfigError::new(key, one_line(e.into_inner().message()))
    })
}

/// Overrides config keys from the environment: `CDN_<KEY>` (upper case) for every key of
/// `config` and for the `optional` keys that are unset (they do not appear in it). Strings are
/// taken as given, lists as comma-separated items, everything else as a TOML value. Order of
/// precedence in the binaries: file, then environment, then flags. A bad value names the
/// variable.
pub fn apply_env<T: Serialize + DeserializeOwned>(
    config: T,
    optional: &[&str],
) -> Result<T, ConfigError> {
    apply_vars(config, optional, |name| std::env::var(name).ok())
}

fn apply_vars<T: Serialize + DeserializeOwned>(
    config: T,
    optional: &[&str],
    var: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let Ok(toml::Value::Table(mut table)) = toml::Value::try_from(&config) else {
        return Ok(config);
    };
    let keys: Vec<String> = table
        .keys()
        .cloned()
        .chain(optional.iter().map(|k| k.to_string()))
        .collect();
    let mut from_env = Vec::new();
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
        table.insert(key.clone(), value);
        from_env.push((key, name));
    }
    if from_env.is_empty() {
        return Ok(config);
    }
    let text =
        toml::to_string(&table).map_err(|e| ConfigError::new("<environment>", e.to_string()))?;
    parse_toml(&text).map_err(|e| match from_env.iter().find(|(k, _)| *k == e.key) {
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
            &["token"],
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
        let err = apply_vars(EnvSample::default(), &[], env(&[("CDN_COUNT", "many")])).unwrap_err();
        assert_eq!(err.key, "CDN_COUNT");
        let err = apply_vars(EnvSample::default(), &[], env(&[("CDN_SIZE", "lots")])).unwrap_err();
        assert_eq!(err.key, "CDN_SIZE");
        // Nothing set: the config comes back as it was.
        assert_eq!(
            apply_vars(EnvSample::default(), &[], env(&[])).unwrap(),
            EnvSample::default()
        );
    }

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be parsed
    struct Sample {
        #[serde(default)]
        capacity: Option<ByteSize>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
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
        let ok = parse_toml::<Sample>("capacity = 2048\n").unwrap();
        assert_eq!(ok.capacity, Some(ByteSize(2048)));
    }
}
