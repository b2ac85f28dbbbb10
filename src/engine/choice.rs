//! Which engine runs a pipeline's model, and the settings every engine
//! shares (`[engine]`).
//!
//! The choice is a plain enum so that adding an engine is one variant here
//! and one arm in [`crate::engine::prepare::open_engine`], the only place that matches
//! on it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The engine a pipeline asks for (`[[pipeline]] engine = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// The best engine this box has: `onnxruntime` when its library is
    /// found (see [`EngineSettings::onnxruntime_library`]) and it can run the
    /// model, else `tract`.
    #[default]
    Auto,
    /// tract, the embedded CPU engine: always compiled, needs nothing installed.
    Tract,
    /// ONNX Runtime on the CPU, opened at run time from `libonnxruntime.so`
    /// (cargo feature `onnxruntime`, on by default).
    Onnxruntime,
}

impl EngineChoice {
    /// Every choice, in the order `gsinfer bench --engine` lists them.
    pub const ALL: [EngineChoice; 3] = [
        EngineChoice::Auto,
        EngineChoice::Tract,
        EngineChoice::Onnxruntime,
    ];

    /// The configuration name, e.g. `"onnxruntime"`.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Tract => "tract",
            EngineChoice::Onnxruntime => "onnxruntime",
        }
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    /// Parses a configuration name (`auto`, `tract`, `onnxruntime`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EngineChoice::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown engine `{s}`; use one of auto, tract, onnxruntime"))
    }
}

/// Settings shared by every engine instance (`[engine]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// `libonnxruntime.so` for the `onnxruntime` engine (ONNX Runtime 1.17
    /// or newer; a relative path is taken from the configuration file's
    /// folder). Unset: `$ORT_DYLIB_PATH`, then the dynamic loader's own
    /// search (`LD_LIBRARY_PATH`, `/etc/ld.so.cache`: a system package),
    /// then `/usr/local/lib` and `/usr/lib`. `pip install onnxruntime`
    /// ships one in `site-packages/onnxruntime/capi/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime_library: Option<PathBuf>,
    /// Intra-op threads per engine instance (`onnxruntime`); tract runs on
    /// one thread whatever this says.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Engine worker threads shared by every model's instances
    /// ([`crate::batch::WorkerPool`]). `None` (not set): one per CPU core
    /// the process may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// When tract makes and times its per-bucket plans.
    #[serde(default)]
    pub tract_tuning: TractTuning,
}

/// When tract makes and times its per-bucket plans (`engine.tract_tuning`;
/// [`crate::engine::tract`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TractTuning {
    /// After the model is ready, on one background thread at the lowest
    /// CPU priority; the symbolic plan serves meanwhile (the default).
    #[default]
    Background,
    /// Before the model is ready: start-up takes about two core-seconds
    /// more per LSTM model, and every batch runs tuned from the first.
    AtLoad,
}

fn default_threads() -> usize {
    1
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            onnxruntime_library: None,
            threads: default_threads(),
            workers: None,
            tract_tuning: TractTuning::default(),
        }
    }
}

impl EngineSettings {
    /// Engine worker threads: `workers`, else the CPU cores this process
    /// may use (`sched_getaffinity`, cgroup quota), at least one.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// Semantic checks serde cannot make; `(key, message)` per problem.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.threads == 0 || self.threads > 256 {
            problems.push((
                "engine.threads".into(),
                "must be between 1 and 256 intra-op threads per engine instance".into(),
            ));
        }
        if self.workers.is_some_and(|w| w == 0 || w > 1024) {
            problems.push((
                "engine.workers".into(),
                "must be between 1 and 1024 engine worker threads (leave it out for one per CPU core)".into(),
            ));
        }
        if let Some(lib) = &self.onnxruntime_library {
            if !lib.is_file() {
                problems.push((
                    "engine.onnxruntime_library".into(),
                    format!(
                        "{} is not a file; point it at libonnxruntime.so (pip install onnxruntime ships one in site-packages/onnxruntime/capi/)",
                        lib.display()
                    ),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for c in EngineChoice::ALL {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(text, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<EngineChoice>(&text).unwrap(), c);
            assert_eq!(c.name().parse::<EngineChoice>().unwrap(), c);
        }
        let err = "trt".parse::<EngineChoice>().unwrap_err();
        assert!(err.contains("auto, tract, onnxruntime"), "{err}");
    }

    #[test]
    fn settings_problems_name_the_key() {
        let s = EngineSettings {
            onnxruntime_library: Some("/nonexistent/libonnxruntime.so".into()),
            threads: 0,
            workers: Some(0),
            ..EngineSettings::default()
        };
        let keys: Vec<String> = s.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "engine.threads",
                "engine.workers",
                "engine.onnxruntime_library"
            ]
        );
        assert!(EngineSettings::default().problems().is_empty());
    }
}
