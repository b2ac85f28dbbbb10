//! The engine room's own settings: `[tensorrt]` ([`TensorRtConfig`]). It
//! depends on nothing else in gsinfer, so the configuration can name it
//! without reaching into plan building or model preparation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TensorRT settings (`[tensorrt]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtConfig {
    /// Folder of the built plans and their manifests. Default:
    /// `$STATE_DIRECTORY/engines` (systemd's `StateDirectory=`), else
    /// `/var/lib/gsinfer/engines`. Never inside the model repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_dir: Option<PathBuf>,
    /// Rebuild missing, stale or corrupt plans when `gsinfer run` starts
    /// (default `true`); with `false` such models fall back to tract until
    /// `gsinfer engine build` is run.
    #[serde(default = "default_true")]
    pub rebuild_at_start: bool,
    /// CUDA device ordinal (default 0).
    #[serde(default)]
    pub device: usize,
    /// Path of `libnvinfer.so`; default: the dynamic loader's search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    /// Path of `libnvonnxparser.so`; default: the dynamic loader's search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxparser_library: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self {
            engine_dir: None,
            rebuild_at_start: true,
            device: 0,
            library: None,
            onnxparser_library: None,
        }
    }
}

impl TensorRtConfig {
    /// The engine directory in effect (see [`Self::engine_dir`]).
    pub fn engine_dir(&self) -> PathBuf {
        self.engine_dir.clone().unwrap_or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .and_then(|s| {
                    // systemd passes several colon-separated folders when
                    // the unit names several; the first is gsinfer's.
                    s.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                })
                .map(|d| d.join("engines"))
                .unwrap_or_else(|| PathBuf::from("/var/lib/gsinfer/engines"))
        })
    }
}
