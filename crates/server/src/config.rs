//! The server's configuration tree: built-in defaults, then the TOML file,
//! then `STARLING_*` environment variables, then command-line flags. One
//! serde tree with defaults; `validate` names the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use starling_broker::{ConfigError, MqttConfig};

/// The commented default configuration, printed by `generate-config`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, data_dir: PathBuf::from("./data") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    pub mqtt: String,
    pub ws: String,
    pub mqtts: String,
    pub wss: String,
    pub ws_path: String,
    pub http: String,
    /// Serve the chat web app at /chat/ on the HTTP listener.
    pub chat: bool,
    pub max_connections: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            mqtt: "0.0.0.0:1883".into(),
            ws: "0.0.0.0:8083".into(),
            mqtts: "0.0.0.0:8883".into(),
            wss: "0.0.0.0:8084".into(),
            ws_path: "/mqtt".into(),
            http: "0.0.0.0:8080".into(),
            chat: true,
            max_connections: 100_000,
            shutdown_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    pub grpc: String,
    pub advertise_grpc: String,
    pub advertise_mqtt: String,
    pub advertise_http: String,
    pub join: String,
    pub bootstrap: bool,
    pub node_down_after_secs: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_every: u64,
    pub write_timeout_ms: u64,
    pub bulk_nice: i32,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            grpc: "0.0.0.0:7000".into(),
            advertise_grpc: String::new(),
            advertise_mqtt: String::new(),
            advertise_http: String::new(),
            join: String::new(),
            bootstrap: true,
            node_down_after_secs: 5,
            heartbeat_ms: 150,
            election_timeout_ms: 1000,
            snapshot_every: 10_000,
            write_timeout_ms: 5000,
            bulk_nice: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub allow_anonymous: bool,
    pub password_file: String,
    pub acl_file: String,
    pub failure_threshold: u32,
    pub failure_delay_ms: u64,
    pub use_identity_as_username: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            allow_anonymous: true,
            password_file: String::new(),
            acl_file: String::new(),
            failure_threshold: 3,
            failure_delay_ms: 2000,
            use_identity_as_username: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub require_client_cert: bool,
}

impl TlsSection {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub listeners: ListenerConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthSection,
    pub tls: TlsSection,
    pub cluster: ClusterSection,
    pub log: LogConfig,
}

/// Parses a listener address; "off" (or empty) disables the listener.
pub fn listen_addr(key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| ConfigError::new(key, format!("`{v}` is not an address like 0.0.0.0:1883 (or \"off\")")))
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 {
            return Err(ConfigError::new("node.id", "must be a positive integer"));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("node.data_dir", "must not be empty"));
        }
        listen_addr("listeners.mqtt", &self.listeners.mqtt)?;
        listen_addr("listeners.ws", &self.listeners.ws)?;
        listen_addr("listeners.http", &self.listeners.http)?;
        listen_addr("listeners.mqtts", &self.listeners.mqtts)?;
        listen_addr("listeners.wss", &self.listeners.wss)?;
        let t = &self.tls;
        if t.cert.is_empty() != t.key.is_empty() {
            return Err(ConfigError::new("tls.key", "tls.cert and tls.key go together"));
        }
        if t.cert.is_empty() && (!t.client_ca.is_empty() || t.require_client_cert) {
            return Err(ConfigError::new("tls.client_ca", "client certificates need tls.cert and tls.key"));
        }
        if t.require_client_cert && t.client_ca.is_empty() {
            return Err(ConfigError::new("tls.require_client_cert", "needs tls.client_ca to verify them"));
        }
        if self.auth.use_identity_as_username && t.client_ca.is_empty() {
            return Err(ConfigError::new("auth.use_identity_as_username", "needs tls.client_ca"));
        }
        if !self.listeners.ws_path.starts_with('/') {
            return Err(ConfigError::new("listeners.ws_path", "must start with '/'"));
        }
        if self.listeners.max_connections == 0 {
            return Err(ConfigError::new("listeners.max_connections", "must be at least 1"));
        }
        self.mqtt.validate("mqtt.")?;
        let c = &self.cluster;
        if listen_addr("cluster.grpc", &c.grpc)?.is_none() {
            return Err(ConfigError::new(
                "cluster.grpc",
                "the gRPC listener cannot be off: peers and the CLI use it",
            ));
        }
        if c.heartbeat_ms == 0 || c.heartbeat_ms * 3 > c.election_timeout_ms {
            return Err(ConfigError::new(
                "cluster.heartbeat_ms",
                "must be positive and at most a third of cluster.election_timeout_ms",
            ));
        }
        if c.node_down_after_secs == 0 {
            return Err(ConfigError::new("cluster.node_down_after_secs", "must be at least 1"));
        }
        if c.snapshot_every < 100 {
            return Err(ConfigError::new("cluster.snapshot_every", "must be at least 100"));
        }
        if c.write_timeout_ms < 100 {
            return Err(ConfigError::new("cluster.write_timeout_ms", "must be at least 100"));
        }
        if !(0..=19).contains(&c.bulk_nice) {
            return Err(ConfigError::new("cluster.bulk_nice", "must be from 0 to 19"));
        }
        for (key, v) in [
            ("cluster.advertise_grpc", &c.advertise_grpc),
            ("cluster.advertise_mqtt", &c.advertise_mqtt),
            ("cluster.advertise_http", &c.advertise_http),
            ("cluster.join", &c.join),
        ] {
            if !v.is_empty() && !v.contains(':') {
                return Err(ConfigError::new(key, format!("`{v}` must be host:port")));
            }
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{origin}: {message}")]
    Override { origin: String, message: String },
}

/// Parses a value given as text (environment, `--set`): TOML syntax when
/// it is valid TOML (numbers, booleans, quoted strings), else a string.
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<BTreeMap<String, toml::Value>>(&format!("v = {raw}")) {
        Ok(mut m) => m.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Every `table.key` path of the default tree.
fn key_paths() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(Config::default()) {
        for (table, v) in t {
            if let toml::Value::Table(inner) = v {
                for key in inner.keys() {
                    out.push((table.clone(), key.clone()));
                }
            }
        }
    }
    out
}

/// The environment variable for `table.key`.
pub fn env_name(table: &str, key: &str) -> String {
    format!("STARLING_{}_{}", table.to_uppercase(), key.to_uppercase())
}

fn set_path(root: &mut toml::Table, path: &str, value: toml::Value, origin: &str) -> Result<(), LoadError> {
    let Some((table, key)) = path.split_once('.') else {
        return Err(LoadError::Override {
            origin: origin.into(),
            message: format!("`{path}` is not table.key"),
        });
    };
    let known = key_paths().iter().any(|(t, k)| t == table && k == key);
    if !known {
        return Err(LoadError::Override {
            origin: origin.into(),
            message: format!("unknown setting `{path}`"),
        });
    }
    let entry = root.entry(table.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_string(), value);
    }
    Ok(())
}

/// Builds the configuration from a file, the environment and overrides
/// (`table.key=value` pairs from flags, applied last, in order).
pub fn load(
    file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<Config, LoadError> {
    let mut root = toml::Table::new();
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        // Parse the file alone first so its errors point into the file.
        toml::from_str::<Config>(&text).map_err(|e| LoadError::Parse {
            path: path.into(),
            message: e.message().to_string() + &span_hint(&text, e.span()),
        })?;
        root = toml::from_str(&text).map_err(|e: toml::de::Error| LoadError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
    }
    for (table, key) in key_paths() {
        let name = env_name(&table, &key);
        if let Some(raw) = env(&name) {
            let path = format!("{table}.{key}");
            set_path(&mut root, &path, parse_value(&raw), &name)?;
            check_one(&root, &name, &path)?;
        }
    }
    for (path, raw) in overrides {
        let origin = format!("--set {path}");
        set_path(&mut root, path, parse_value(raw), &origin)?;
        check_one(&root, &origin, path)?;
    }
    let text = toml::to_string(&root)
        .map_err(|e| LoadError::Override { origin: "config".into(), message: e.to_string() })?;
    let config: Config = toml::from_str(&text)
        .map_err(|e| LoadError::Override { origin: "config".into(), message: e.message().into() })?;
    config.validate()?;
    Ok(config)
}

/// Type-checks the tree after one override so the error names its origin.
fn check_one(root: &toml::Table, origin: &str, path: &str) -> Result<(), LoadError> {
    let text = toml::to_string(root).unwrap_or_default();
    toml::from_str::<Config>(&text).map(|_| ()).map_err(|e| LoadError::Override {
        origin: origin.into(),
        message: format!("invalid value for `{path}`: {}", e.message()),
    })
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let start = r.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!(" (line {line}: `{src}`)")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_file_matches_the_built_in_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nmax_inflight = 5\nmax_queued_messages = 7\n[node]\nid = 3\n").unwrap();
        let env = |k: &str| match k {
            "STARLING_MQTT_MAX_QUEUED_MESSAGES" => Some("9".to_string()),
            "STARLING_LISTENERS_MQTT" => Some("127.0.0.1:1999".to_string()),
            _ => None,
        };
        let c = load(Some(&path), &env, &[("node.id".into(), "4".into())]).unwrap();
        assert_eq!(c.mqtt.max_inflight, 5);
        assert_eq!(c.mqtt.max_queued_messages, 9);
        assert_eq!(c.listeners.mqtt, "127.0.0.1:1999");
        assert_eq!(c.node.id, 4);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(None, &no_env, &[("mqtt.max_qos".into(), "3".into())]).unwrap_err().to_string();
        assert!(e.contains("mqtt.max_qos"), "{e}");
        let e =
            load(None, &no_env, &[("mqtt.max_inflight".into(), "\"lots\"".into())]).unwrap_err().to_string();
        assert!(e.contains("mqtt.max_inflight"), "{e}");
        let e = load(None, &no_env, &[("cluster.bulk_nice".into(), "20".into())]).unwrap_err().to_string();
        assert!(e.contains("cluster.bulk_nice"), "{e}");
        let e = load(None, &no_env, &[("mqtt.nope".into(), "1".into())]).unwrap_err().to_string();
        assert!(e.contains("mqtt.nope"), "{e}");
        let env = |k: &str| (k == "STARLING_LISTENERS_HTTP").then(|| "nowhere".to_string());
        let e = load(None, &env, &[]).unwrap_err().to_string();
        assert!(e.contains("listeners.http"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[mqtt]\nmax_inflight = 5\nbogus = 1\n").unwrap();
        let e = load(Some(&path), &no_env, &[]).unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn listeners_can_be_disabled() {
        assert_eq!(listen_addr("k", "off").unwrap(), None);
        assert!(listen_addr("k", "127.0.0.1:0").unwrap().is_some());
    }
}
