//! The whole configuration as typed structs, loaded once before anything
//! starts: TOML file, then `GSINFER__<SECTION>__<KEY>` environment
//! overrides (the `config` crate), then serde with the path of every bad key,
//! then semantic validation that reports every problem at once.
//!
//! Each stage's settings live beside the stage and are re-exported here.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::batch::BatchConfig;
pub use crate::engine::{EngineChoice, EngineSettings};
pub use crate::ingest::decode::PayloadFormat;
pub use crate::ingest::mqtt::BrokerConfig;
pub use crate::ingest::serial::SerialConfig;
pub use crate::ingest::IngestConfig;
pub use crate::kserve::grpc::GrpcConfig;
pub use crate::publish::PublishConfig;
pub use crate::score::{ScoringConfig, ThresholdConfig};
pub use crate::status::StatusConfig;
pub use crate::window::WindowConfig;

/// Largest configuration file read, in bytes: 16 MiB. A per-channel
/// pipeline takes ~370 bytes, so a spacecraft of 10 000 channels, one model
/// each, is a ~3.7 MB file (`config/reference.toml`, 196 pipelines, is
/// ~70 KB); the limit is there to refuse a wrong file, not a large mission.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Smallest and largest `broker.max_packet_bytes`: room for a CONNECT with
/// credentials and a status message, and MQTT's own limit (the remaining
/// length field holds at most 268 435 455 bytes).
const MAX_PACKET_RANGE: std::ops::RangeInclusive<usize> = 1024..=268_435_455;

/// The model repository (`[repository]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Folder in Triton's layout; a relative path is taken from the
    /// configuration file's folder.
    pub path: PathBuf,
}

/// One model served on a set of channels (`[[pipeline]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Model name in the repository, scored with the highest version its
    /// `version_policy` selects; `<model>@<version>` scores with that
    /// version (which the policy must select), so a new version can be
    /// shadowed beside the old one on the same telemetry. The whole string
    /// names the pipeline's results (topics, status page, state).
    pub model: String,
    /// The engine that runs the model: `auto` (onnxruntime when its library is found, else tract), `tract` or
    /// `onnxruntime` (settings in `[engine]`).
    #[serde(default)]
    pub engine: EngineChoice,
    /// MQTT topic filters carrying this pipeline's telemetry; the channel is
    /// the topic's last level, e.g. `telemetry/SMAP/+` → channel `A-1`;
    /// may be empty when a `[[serial]]` link feeds the pipeline.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Channels served; empty serves every channel matching `topics`.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Payload format of the telemetry topics.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Values per sample (`F`), e.g. 25 for SMAP.
    pub features: usize,
    /// Window length and stride.
    pub window: WindowConfig,
    /// Micro-batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Scores, threshold and events.
    pub scoring: ScoringConfig,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// MQTT broker connection.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// HTTP status server (and the KServe v2 HTTP API).
    #[serde(default)]
    pub status: StatusConfig,
    /// KServe v2 gRPC API.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// Where the models are.
    pub repository: RepositoryConfig,
    /// Input limits and queues.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Result topics.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Settings every engine instance shares.
    #[serde(default)]
    pub engine: EngineSettings,
    /// One entry per served model.
    #[serde(rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    /// TensorRT: engine directory, start-up rebuild, device, libraries.
    #[serde(default)]
    pub tensorrt: crate::engine::config::TensorRtConfig,
    /// Channel state kept across restarts ([`crate::state`]).
    #[serde(default)]
    pub state: crate::state::StateConfig,
    /// Serial links feeding the pipelines (`[[serial]]`), besides MQTT.
    #[serde(default, rename = "serial", skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<SerialConfig>,
    /// Detector ensembles (`[[ensemble]]`): pipelines on the same channel
    /// whose anomalies are fused by a k-of-n vote into one event stream
    /// ([`crate::score::fusion`]).
    #[serde(default, rename = "ensemble", skip_serializing_if = "Vec::is_empty")]
    pub ensembles: Vec<crate::score::EnsembleConfig>,
}

/// One configuration problem: the file, the key, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `pipeline[0].window.stride`; empty for the
    /// file as a whole.
    pub key: String,
    /// What is wrong and how to fix it, lowercase.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found in one configuration; printed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path` (TOML) with `GSINFER__<SECTION>__<KEY>` overrides from the
    /// environment, resolves relative paths against the file's folder, and
    /// validates the result.
    ///
    /// # Errors
    /// Every problem found, each naming the file and the key.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let one = |key: &str, message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: key.to_string(),
                message,
            }])
        };
        if !path.is_file() {
            return Err(one(
                "",
                "no such file; pass an existing TOML file with --config".into(),
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_CONFIG_BYTES => {
                return Err(one(
                    "",
                    format!(
                        "is {} bytes, more than a configuration may be ({MAX_CONFIG_BYTES}); pass the right file with --config",
                        m.len()
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(one("", format!("cannot read it: {e}"))),
        }
        let merged = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("GSINFER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| one("", format!("{e}")))?;
        let value: serde_json::Value = merged
            .try_deserialize()
            .map_err(|e| one("", format!("{e}")))?;
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            one(&key, e.into_inner().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.repository.path.is_relative() {
            config.repository.path = base.join(&config.repository.path);
        }
        if let Some(lib) = config
            .engine
            .onnxruntime_library
            .as_mut()
            .filter(|l| l.is_relative())
        {
            *lib = base.join(&*lib);
        }
        if let Some(password) = config
            .broker
            .password_file
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *password = base.join(&*password);
        }
        if let Some(tls) = config.broker.tls.as_mut() {
            tls.resolve_paths(base);
        }
        if let Some(token) = config
            .status
            .token_file
            .as_mut()
            .filter(|t| t.is_relative())
        {
            *token = base.join(&*token);
        }
        if let Some(dir) = config
            .tensorrt
            .engine_dir
            .as_mut()
            .filter(|d| d.is_relative())
        {
            *dir = base.join(&*dir);
        }
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(key, message)| ConfigError {
                        file: path.to_path_buf(),
                        key,
                        message,
                    })
                    .collect(),
            ))
        }
    }

    /// Semantic checks serde cannot make; `(key, message)` per problem.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |key: String, message: &str| problems.push((key, message.to_string()));
        if self.broker.port == 0 {
            bad(
                "broker.port".into(),
                "must be a TCP port between 1 and 65535, e.g. 1883",
            );
        }
        if self.broker.host.trim().is_empty() {
            bad(
                "broker.host".into(),
                "must name the broker, e.g. \"127.0.0.1\"",
            );
        }
        if self.broker.reconnect_min_ms == 0
            || self.broker.reconnect_min_ms > self.broker.reconnect_max_ms
        {
            bad(
                "broker.reconnect_min_ms".into(),
                "must be at least 1 and at most broker.reconnect_max_ms",
            );
        }
        if !MAX_PACKET_RANGE.contains(&self.broker.max_packet_bytes) {
            bad(
                "broker.max_packet_bytes".into(),
                &format!(
                    "must be between {} and {} bytes (MQTT's limit), e.g. 1048576",
                    MAX_PACKET_RANGE.start(),
                    MAX_PACKET_RANGE.end()
                ),
            );
        }
        if let Some(password) = &self.broker.password_file {
            if self.broker.username.is_none() {
                bad(
                    "broker.password_file".into(),
                    "is set but broker.username is not; MQTT sends a password only with a user name: set broker.username",
                );
            } else if let Err(e) =
                crate::secrets::read_secret_line("broker.password_file", password)
            {
                bad(e.key().into(), &e.detail());
            }
        }
        if let Some(tls) = &self.broker.tls {
            if let Err(e) = crate::ingest::tls::client_config(tls) {
                bad(e.key().into(), &e.detail());
            }
        }
        if self.broker.qos > 2 || self.publish.score_qos > 2 || self.publish.events_qos > 2 {
            bad(
                "broker.qos".into(),
                "MQTT QoS levels are 0, 1 or 2 (broker.qos, publish.score_qos, publish.events_qos)",
            );
        }
        if self.status.listen.parse::<SocketAddr>().is_err() {
            bad(
                "status.listen".into(),
                "must be an address and port, e.g. \"127.0.0.1:8080\"",
            );
        }
        if self.status.threads == 0
            || self.status.max_body_bytes == 0
            || self.status.read_timeout_ms == 0
            || self.status.infer_timeout_ms == 0
        {
            bad(
                "status".into(),
                "threads, max_body_bytes, read_timeout_ms and infer_timeout_ms must be positive",
            );
        }
        if let Some(token) = &self.status.token_file {
            if let Err(e) = crate::http::limits::read_token(token) {
                bad(e.key().into(), &e.detail());
            }
        }
        for (key, message) in self.grpc.problems(&self.status.listen) {
            bad(key, &message);
        }
        if self.ingest.max_payload_bytes == 0
            || self.ingest.queue_capacity == 0
            || self.ingest.max_samples_per_payload == 0
        {
            bad(
                "ingest".into(),
                "max_payload_bytes, max_samples_per_payload and queue_capacity must be positive",
            );
        }
        if self.ingest.pipeline_tasks > crate::ingest::MAX_PIPELINE_TASKS {
            bad(
                "ingest.pipeline_tasks".into(),
                &format!(
                    "must be at most {} (each task has a state writer thread); 0 picks one per two cores",
                    crate::ingest::MAX_PIPELINE_TASKS
                ),
            );
        }
        if !self.publish.score_max_rate_hz.is_finite() || self.publish.score_max_rate_hz < 0.0 {
            bad(
                "publish.score_max_rate_hz".into(),
                "must be 0 (unlimited) or a positive rate in scores/s per channel",
            );
        }
        for (key, message) in self.engine.problems() {
            bad(key, &message);
        }
        for (key, message) in self.state.problems() {
            bad(format!("state.{key}"), &message);
        }
        if self.pipelines.is_empty() {
            bad(
                "pipeline".into(),
                "add at least one [[pipeline]] section naming a model and its topics",
            );
        }
        let mut models = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let k = |field: &str| format!("pipeline[{i}].{field}");
            if !models.insert(p.model.as_str()) {
                bad(k("model"), "serves a model another [[pipeline]] already serves; give each model one pipeline");
            }
            let fed_by_serial = self
                .serial
                .iter()
                .any(|s| s.pipeline_index(&self.pipelines) == Some(i));
            if p.topics.is_empty() && !fed_by_serial {
                bad(
                    k("topics"),
                    "add at least one MQTT topic filter, e.g. [\"telemetry/SMAP/+\"], or a [[serial]] link feeding the pipeline",
                );
            }
            for t in &p.topics {
                if !rumqttc::valid_filter(t) {
                    bad(k("topics"), &format!("`{t}` is not a valid MQTT topic filter ('+' and '#' must fill a whole level)"));
                }
            }
            if p.features == 0 {
                bad(
                    k("features"),
                    "must be the number of values per sample, at least 1",
                );
            }
            if p.window.length == 0 {
                bad(k("window.length"), "must be at least 1 sample");
            }
            if p.window.stride == 0 {
                bad(
                    k("window.stride"),
                    "must be at least 1 sample (1 scores every sample)",
                );
            }
            if p.batch
                .latency_budget_us
                .is_some_and(|us| us == 0 || us > crate::batch::MAX_BUDGET_US)
            {
                bad(
                    k("batch.latency_budget_us"),
                    "must be between 1 µs and 10 s (10000000)",
                );
            }
            if p.batch.queue_capacity == 0 {
                bad(k("batch.queue_capacity"), "must be at least 1 window");
            }
            if p.batch.buckets.first() == Some(&0)
                || !p.batch.buckets.windows(2).all(|w| w[0] < w[1])
            {
                bad(
                    k("batch.buckets"),
                    "must be positive batch sizes in ascending order, e.g. [1, 4, 16, 64]",
                );
            }
            if p.scoring.smoothing_span.is_nan() || p.scoring.smoothing_span < 1.0 {
                bad(
                    k("scoring.smoothing_span"),
                    "must be at least 1 (1 disables smoothing)",
                );
            }
            if p.scoring.target_feature >= p.features.max(1) {
                bad(
                    k("scoring.target_feature"),
                    "must be a feature index below `features`",
                );
            }
            if p.scoring
                .reconstruction_features
                .iter()
                .any(|f| *f >= p.features)
            {
                bad(
                    k("scoring.reconstruction_features"),
                    "must list feature indices below `features`",
                );
            }
            for (field, message) in p.scoring.threshold.problems() {
                bad(k(&format!("scoring.threshold.{field}")), &message);
            }
        }
        problems.extend(crate::ingest::serial::validate(
            &self.serial,
            &self.pipelines,
        ));
        for (i, e) in self.ensembles.iter().enumerate() {
            for (field, message) in e.problems() {
                problems.push((format!("ensemble[{i}].{field}"), message));
            }
            for m in &e.models {
                let (head, tail) = m.split_once("{channel}").unwrap_or((m, ""));
                let served = self.pipelines.iter().any(|p| {
                    if m.contains("{channel}") {
                        p.model.len() > head.len() + tail.len()
                            && p.model.starts_with(head)
                            && p.model.ends_with(tail)
                    } else {
                        p.model == *m
                    }
                });
                if !served {
                    problems.push((
                        format!("ensemble[{i}].models"),
                        format!("`{m}` matches no [[pipeline]]'s model; list served models (`{{channel}}` stands for the channel)"),
                    ));
                }
            }
            if self.pipelines.iter().any(|p| p.model == e.name) {
                problems.push((
                    format!("ensemble[{i}].name"),
                    format!(
                        "`{}` is a pipeline's model; give the ensemble a name of its own",
                        e.name
                    ),
                ));
            }
        }
        problems
    }

    /// The effective configuration as TOML, with secrets left out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gsinfer.example.toml")
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("gsinfer.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Serialises the tests that read or write `GSINFER__*` variables.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    const MINIMAL: &str = r#"
[repository]
path = "models"
[[pipeline]]
model = "m"
topics = ["telemetry/+"]
features = 2
window = { length = 4 }
scoring = { kind = "forecast", threshold = { method = "static", value = 0.3 } }
"#;

    #[test]
    fn shipped_example_parses_and_validates() {
        let c = Config::load(&example_path()).unwrap();
        assert_eq!(c.status.listen, "127.0.0.1:8080");
        assert!(!c.pipelines.is_empty());
        assert!(c
            .repository
            .path
            .join(&c.pipelines[0].model)
            .join("config.pbtxt")
            .is_file());
    }

    /// Every pipeline's model has a version 1 ONNX file in the repository.
    fn assert_models_exist(c: &Config) {
        for p in &c.pipelines {
            let file = c.repository.path.join(&p.model).join("1/model.onnx");
            assert!(file.is_file(), "{}", p.model);
        }
    }

    #[test]
    fn shipped_per_channel_configs_parse_and_name_existing_models() {
        for family in ["lstm", "tfm", "vae"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/smap_{family}.toml"));
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.pipelines.len(), 40, "{family}");
            assert!(c.pipelines.iter().all(|p| p.channels.len() == 1));
            assert_models_exist(&c);
        }
    }

    #[test]
    fn shipped_reference_config_serves_every_shared_channel_with_the_vote() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut channels: Vec<&str> = c
            .pipelines
            .iter()
            .flat_map(|p| p.channels.iter().map(String::as_str))
            .collect();
        channels.dedup();
        // The 40 SMAP and 9 MSL channels of the shared data set.
        assert_eq!(channels.len(), 49);
        assert_eq!(c.pipelines.len(), 4 * 49);
        assert!(c.pipelines.iter().any(|p| p.features == 55));
        assert_models_exist(&c);
        let e = &c.ensembles[0];
        assert_eq!(
            (e.name.as_str(), e.min_votes, e.models.len()),
            ("vote", 2, 4)
        );
    }

    #[test]
    fn ensembles_are_validated_against_the_pipelines() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}[[ensemble]]\nname = \"m\"\nmodels = [\"m\", \"x_{{channel}}\"]\nmin_votes = 3\n"
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ensemble[0].min_votes"), "{err}");
        assert!(
            err.contains("`x_{channel}` matches no [[pipeline]]"),
            "{err}"
        );
        assert!(err.contains("ensemble[0].name"), "{err}");
        let ok = format!(
            "{MINIMAL}[[pipeline]]\nmodel = \"v_A-1\"\ntopics = [\"telemetry/+\"]\nfeatures = 2\nwindow = {{ length = 4 }}\n\
             scoring = {{ kind = \"forecast\", threshold = {{ method = \"ndt\" }} }}\n\
             [[ensemble]]\nname = \"both\"\nmodels = [\"m\", \"v_{{channel}}\"]\nmin_votes = 2\n"
        );
        let c = Config::load(&write(dir.path(), &ok)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.ensembles[0].members("A-1"), vec!["m", "v_A-1"]);
    }

    #[test]
    fn defaults_and_relative_repository_path() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), MINIMAL)).unwrap();
        assert_eq!(c.broker.port, 1883);
        assert_eq!(c.pipelines[0].window.stride, 1);
        assert_eq!(c.repository.path, dir.path().join("models"));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace(
            "window = { length = 4 }",
            "window = { length = 4, strid = 2 }",
        );
        let err = Config::load(&write(dir.path(), &text)).unwrap_err();
        let line = err.to_string();
        assert!(
            line.contains("pipeline[0].window") && line.contains("strid"),
            "{line}"
        );
        assert!(line.contains("gsinfer.toml"), "{line}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[broker]\nport = \"abc\"\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.port"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL
            .replace(
                "window = { length = 4 }",
                "window = { length = 0, stride = 0 }",
            )
            .replace("telemetry/+", "telemetry/a+b");
        let err = Config::load(&write(dir.path(), &text)).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"pipeline[0].window.length"), "{keys:?}");
        assert!(keys.contains(&"pipeline[0].window.stride"), "{keys:?}");
        assert!(keys.contains(&"pipeline[0].topics"), "{keys:?}");
        assert_eq!(err.to_string().lines().count(), err.0.len());
    }

    #[test]
    fn environment_overrides_the_file() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), MINIMAL);
        std::env::set_var("GSINFER__BROKER__PORT", "1884");
        std::env::set_var("GSINFER__STATUS__LISTEN", "127.0.0.1:9090");
        let c = Config::load(&path);
        std::env::remove_var("GSINFER__BROKER__PORT");
        std::env::remove_var("GSINFER__STATUS__LISTEN");
        let c = c.unwrap();
        assert_eq!(c.broker.port, 1884);
        assert_eq!(c.status.listen, "127.0.0.1:9090");
    }

    #[test]
    fn grpc_is_on_by_default_and_the_environment_moves_or_turns_it_off() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), MINIMAL);
        assert_eq!(Config::load(&path).unwrap().grpc, GrpcConfig::default());
        let example = Config::load(&example_path()).unwrap();
        assert_eq!(example.grpc.listen, "127.0.0.1:8001");
        assert!(
            example.to_toml().contains("[grpc]"),
            "{}",
            example.to_toml()
        );
        for (value, expected) in [("127.0.0.1:9001", "127.0.0.1:9001"), ("", "")] {
            std::env::set_var("GSINFER__GRPC__LISTEN", value);
            let c = Config::load(&path);
            std::env::remove_var("GSINFER__GRPC__LISTEN");
            let c = c.unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(c.grpc.listen, expected);
            assert_eq!(c.grpc.enabled(), !expected.is_empty());
        }
        let text = format!("[grpc]\nlisten = \"nowhere\"\nmax_mesage_bytes = 1\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("grpc") && err.contains("max_mesage_bytes"),
            "{err}"
        );
        let text = format!("[grpc]\nlisten = \"nowhere\"\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc.listen: `nowhere`"), "{err}");
    }

    #[test]
    fn shipped_serial_example_parses_and_validates_once_uncommented() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let (head, serial) = text.split_once("# [[serial]]").unwrap();
        let serial: String = format!("# [[serial]]{serial}")
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let repo = example_path().parent().unwrap().join("../model_repository");
        let text = format!("{head}{serial}").replace(
            "path = \"../model_repository\"",
            &format!("path = {:?}", repo.display().to_string()),
        );
        let c = Config::load(&write(dir.path(), &text)).unwrap();
        assert_eq!(c.serial.len(), 1);
        assert_eq!(c.serial[0].packets[0].apid, 100);
        assert_eq!(c.serial[0].pipeline_index(&c.pipelines), Some(0));
        assert!(c.to_toml().contains("[[serial.packet]]"), "{}", c.to_toml());
    }

    #[test]
    fn shipped_tls_example_names_only_known_keys_once_uncommented() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(example_path()).unwrap();
        let (head, rest) = text.split_once("# [broker.tls]\n").unwrap();
        let (tls, tail) = rest.split_once("\n\n").unwrap();
        let tls: String = tls
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap()))
            .collect();
        let repo = example_path().parent().unwrap().join("../model_repository");
        let text = format!("{head}[broker.tls]\n{tls}\n{tail}").replace(
            "path = \"../model_repository\"",
            &format!("path = {:?}", repo.display().to_string()),
        );
        let dir = tempfile::tempdir().unwrap();
        // Parsed: the only problem is the first file that is not on this machine.
        let err = Config::load(&write(dir.path(), &text)).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key, "broker.tls.ca_file", "{err}");
        assert!(
            err.0[0].message.contains("/etc/gsinfer/mqtt-ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn serial_problems_name_the_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[serial]]\ndevice = \"/dev/ttyS0\"\nframing = \"line\"\npayload = \"f32le\"\n\
             baud_rate = 0\nstop_bits = 3\nkiss_port = 3\nmodel = \"nope\"\n\
             [[serial]]\ndevice = \"/dev/ttyS1\"\nframing = \"kiss\"\nmax_frame_bytes = 8\n\
             [[serial.packet]]\napid = 9\ncrc = true\n\
             parameter = [{{ byte_offset = 0, type = \"f32\", channel = \"a\" }}, {{ byte_offset = 4, type = \"f32\", channel = \"a\", feature = 1 }}]\n",
            MINIMAL.replace("topics = [\"telemetry/+\"]\n", "")
        );
        let err = Config::load(&write(dir.path(), &text)).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "serial[0].baud_rate",
            "serial[0].stop_bits",
            "serial[0].kiss_port",
            "serial[0].model",
            "serial[0].channel",
            "serial[0].payload",
            "serial[1].max_frame_bytes",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        // serial[1] feeds the only pipeline, so its empty topics are fine.
        assert!(!keys.contains(&"pipeline[0].topics"), "{keys:?}");
        let text = err.to_string();
        assert!(
            text.contains("are 16 bytes; raise max_frame_bytes"),
            "{text}"
        );
    }

    #[test]
    fn missing_file_is_one_clear_line() {
        let err = Config::load(Path::new("/nonexistent/gsinfer.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/gsinfer.toml") && err.contains("--config"),
            "{err}"
        );
    }

    #[test]
    fn secret_files_are_checked_at_load_and_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("mqtt.password");
        std::fs::write(&password, "pa55-w0rd-xyzzy\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        // Relative to the configuration's folder.
        let text = format!(
            "[broker]\nusername = \"gsinfer\"\npassword_file = \"mqtt.password\"\n\
             [broker.tls]\nca_file = \"ca.pem\"\nserver_name = \"broker.example\"\n{MINIMAL}"
        );
        let path = write(dir.path(), &text);
        let c = Config::load(&path).unwrap();
        assert_eq!(c.broker.password_file.as_deref(), Some(password.as_path()));
        for shown in [format!("{c:?}"), format!("{:?}", c.broker), c.to_toml()] {
            assert!(!shown.contains("xyzzy"), "{shown}");
        }
        assert!(c.to_toml().contains("[broker.tls]"), "{}", c.to_toml());
        // The password goes into the MQTT options, and only there.
        let o = crate::ingest::mqtt::options(&c.broker, "id", None).unwrap();
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("gsinfer", "pa55-w0rd-xyzzy")
        );
        assert!(matches!(o.transport(), rumqttc::Transport::Tls(_)));

        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: broker.password_file: {p} is readable by group/others (mode 0644); run: chmod 600 {p}",
                path.display(),
                p = password.display()
            )
        );
        std::fs::remove_file(&password).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("broker.password_file: cannot read") && err.lines().count() == 1,
            "{err}"
        );
    }

    #[test]
    fn broker_limits_and_credentials_are_validated() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let text =
            format!("[broker]\npassword_file = \"/nonexistent\"\nmax_packet_bytes = 10\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text)).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"broker.max_packet_bytes"), "{keys:?}");
        assert!(keys.contains(&"broker.password_file"), "{keys:?}");
        assert!(err.to_string().contains("set broker.username"), "{err}");
        let text = format!("[broker.tls]\nca_file = \"ca.pem\"\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broker.tls.ca_file: cannot read")
                && err.contains(&dir.path().join("ca.pem").display().to_string()),
            "{err}"
        );
        let text = format!("[broker.tls]\nca_fil = \"ca.pem\"\n{MINIMAL}");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broker.tls") && err.contains("ca_fil"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_configuration_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let padding = "# padding\n".repeat((MAX_CONFIG_BYTES / 10) as usize + 1);
        let err = Config::load(&write(dir.path(), &format!("{MINIMAL}{padding}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than a configuration may be"), "{err}");
    }
}
