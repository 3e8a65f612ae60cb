//! Layered configuration: flags beat environment variables (clap reads both), which beat
//! the TOML file (`--config`), which beats the defaults. Every TOML key is the flag's long
//! name, and a bad value is one line naming the key.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A configuration value that is wrong, with the key (flag / TOML name) it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("invalid `{key}`: {message}")]
pub struct ConfigError {
    /// The flag's long name (= the TOML key).
    pub key: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl ConfigError {
    /// An error for `key`.
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Flags and environment (`cli`) layered over the TOML file at `file`, if any: `layer`
/// fills what `cli` left unset from the file's values.
pub fn load<A: DeserializeOwned>(
    cli: A,
    file: Option<&Path>,
    layer: impl FnOnce(A, A) -> A,
) -> Result<A, ConfigError> {
    match file {
        Some(p) => Ok(layer(cli, read_toml(p)?)),
        None => Ok(cli),
    }
}

/// Reads a TOML config file; a bad value is reported with the key it belongs to (found
/// from the error's position, since serde's message does not always name it).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let key = e
            .span()
            .and_then(|s| text[..s.start].lines().last().map(str::to_string))
            .and_then(|l| l.split('=').next().map(|k| k.trim().to_string()))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "config".into());
        ConfigError::new(
            &key,
            format!("{} (in {})", e.message().replace('\n', " "), path.display()),
        )
    })
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// The settings of a binary's command line, for [`commented_toml`]: each long flag's name
/// and `--help` text, without the flags every binary has that are not settings (`--config`,
/// `--print-config`, `--log`, `--help`, `--version`).
pub fn setting_keys(cmd: &clap::Command) -> Vec<(String, String)> {
    const NOT_SETTINGS: [&str; 5] = ["config", "print-config", "log", "help", "version"];
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            (!NOT_SETTINGS.contains(&long)).then(|| {
                let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string());
                (long.to_string(), help.unwrap_or_default())
            })
        })
        .collect()
}

/// A printed configuration (`toml`, one `key = value` line per set key, as the `toml`
/// crate writes a flat table) as a commented config file: every key of `keys` (its name and
/// help text, in that order) gets its help as a comment above it, and a key that is not set
/// appears commented out, so the file lists everything that can be configured.
pub fn commented_toml(toml: &str, keys: &[(String, String)]) -> String {
    let mut set: Vec<(&str, &str)> = Vec::new();
    for line in toml.lines() {
        if let Some((k, _)) = line.split_once(" = ") {
            set.push((k.trim(), line));
        }
    }
    let mut out = String::new();
    for (key, help) in keys {
        for h in help.lines() {
            // Wrapped at ~90 columns, as a person would write the file.
            let mut line = String::from("#");
            for w in h.split_whitespace() {
                if line.len() + 1 + w.len() > 90 && line.len() > 1 {
                    out.push_str(&line);
                    out.push('\n');
                    line = String::from("#");
                }
                line.push(' ');
                line.push_str(w);
            }
            out.push_str(&line);
            out.push('\n');
        }
        match set.iter().find(|(k, _)| k == key) {
            Some((_, line)) => out.push_str(line),
            None => {
                out.push_str("# ");
                out.push_str(key);
                out.push_str(" =");
            }
        }
        out.push_str("\n\n");
    }
    // Anything printed that `keys` did not name still goes in, uncommented.
    for (k, line) in &set {
        if !keys.iter().any(|(key, _)| key == k) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_config_lists_every_key() {
        let keys = vec![
            ("listen".to_string(), "Where to listen.".to_string()),
            ("secret".to_string(), "A secret.\nSecond line.".to_string()),
        ];
        let out = commented_toml("listen = \"127.0.0.1:1\"\nextra = 3\n", &keys);
        assert_eq!(
            out,
            "# Where to listen.\nlisten = \"127.0.0.1:1\"\n\n# A secret.\n# Second line.\n# secret =\n\nextra = 3\n"
        );
        let back: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn a_bad_file_value_names_its_key() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct A {
            port: Option<u16>,
        }
        let dir = std::env::temp_dir().join(format!("ib-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "port = \"x\"\n").unwrap();
        let e = read_toml::<A>(&p).unwrap_err();
        assert_eq!(e.key, "port", "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = read_toml::<A>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert_eq!(e.key, "config");
    }
}
