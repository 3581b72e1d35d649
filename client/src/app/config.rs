//! The config file, `$XDG_CONFIG_HOME/natter/config.toml` (by default
//! `~/.config/natter/config.toml`, or `--config FILE`): defaults for the
//! command line, so a person types `natter` rather than the same flags every
//! time. Keys are the long flags' names without `--`; a flag given on the
//! command line wins over the file. Passwords never go here
//! (`NATTER_PASSWORD` or the prompt).

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What the file may say; every key is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Server host name or address.
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    /// Username to log in as.
    pub user: Option<String>,
    /// Connect with TLS.
    pub tls: Option<bool>,
    /// With TLS: trust the certificates in this PEM file.
    pub ca: Option<PathBuf>,
    /// With TLS: accept exactly the certificate with this SHA-256.
    pub fingerprint: Option<String>,
    /// `false`: never use colour (as `NO_COLOR` does).
    pub colour: Option<bool>,
    /// `false`: no bell on a direct message.
    pub bell: Option<bool>,
    /// A command to run on a direct message instead of the bell.
    pub notify: Option<String>,
    /// Seconds without a command before a keepalive (0: never).
    pub keepalive: Option<u64>,
    /// `false`: end instead of reconnecting.
    pub reconnect: Option<bool>,
    /// Write each conversation to its own file in this directory.
    pub log_dir: Option<PathBuf>,
}

/// Parses the file's text; the error names the key and its line.
pub fn parse(text: &str) -> Result<Config, String> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text.get(..span.start).unwrap_or(text).matches('\n').count() + 1);
        let message = e.message().trim_end().to_string();
        match line {
            Some(line) => format!("line {line}: {message}"),
            None => message,
        }
    })
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_path() -> Option<PathBuf> {
    let base = env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("natter").join("config.toml"))
}

/// Reads the config: `explicit` must exist; the default file may be missing
/// (then everything is at its default).
pub fn load(explicit: Option<&Path>) -> Result<Config, String> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => match default_path() {
            Some(path) => (path, false),
            None => return Ok(Config::default()),
        },
    };
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|e| format!("config file {}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(Config::default()),
        Err(e) => Err(format!("cannot read config file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let config = parse(
            r#"
host = "chat.example"
port = 4443
user = "alice"
tls = true
fingerprint = "AB:CD"
ca = "/etc/natter/ca.pem"
colour = false
bell = false
notify = "notify-send natter"
keepalive = 30
reconnect = false
log-dir = "/home/alice/natter-logs"
"#,
        )
        .expect("a valid file");
        assert_eq!(config.host.as_deref(), Some("chat.example"));
        assert_eq!(config.port, Some(4443));
        assert_eq!(config.tls, Some(true));
        assert_eq!(config.keepalive, Some(30));
        assert_eq!(
            config.log_dir,
            Some(PathBuf::from("/home/alice/natter-logs"))
        );
        assert_eq!(parse("").expect("empty is fine"), Config::default());
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let err = parse("user = \"alice\"\nlog_dir = \"x\"\n").expect_err("unknown key");
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(err.contains("log_dir"), "{err}");
        let err = parse("port = \"four\"").expect_err("wrong type");
        assert!(err.starts_with("line 1: "), "{err}");
        assert!(parse("password = \"x\"").is_err());
    }
}
