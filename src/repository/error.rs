//! Errors of the model repository.

use std::{io, path::PathBuf};

/// Why a model repository, a model folder or a config.pbtxt was refused.
///
/// Messages are lowercase, name the offending path or value, and end with a
/// hint saying how to fix it. Errors about config.pbtxt name the file as
/// given to [`crate::repository::ModelConfig::parse`] (`config.pbtxt`) or,
/// from [`crate::repository::ModelRepository::load`], its full path.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The repository root is missing or is not a directory.
    #[error(
        "model repository `{}` is not a directory; hint: pass the folder that holds one sub-folder per model (`<repo>/<model>/config.pbtxt`)",
        .path.display()
    )]
    NotADirectory {
        /// The path given as the repository root.
        path: PathBuf,
    },

    /// A file or folder of the repository could not be read.
    #[error(
        "cannot read `{}`: {source}; hint: check that it exists and that the gsinfer user may read it",
        .path.display()
    )]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A model name that is not a plain folder name (empty, `.`, `..`, or with a separator).
    #[error(
        "model name `{name}` is not a folder name; hint: use the name of a sub-folder of the repository, without `/`, `\\` or `..`"
    )]
    InvalidModelName {
        /// The name asked for.
        name: String,
    },

    /// A folder name in the repository is not valid UTF-8, so it cannot name a model.
    #[error("`{}` has a name that is not utf-8; hint: rename it using ascii letters, digits, `-` and `_`", .path.display())]
    NonUtf8Name {
        /// The folder.
        path: PathBuf,
    },

    /// config.pbtxt is larger than [`crate::repository::MAX_CONFIG_PBTXT_BYTES`].
    #[error(
        "`{}` is {size} bytes, more than a config.pbtxt may be ({limit}); hint: a model configuration takes a few KB, check that this is the right file",
        .path.display()
    )]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// The model folder has no config.pbtxt.
    #[error(
        "model `{model}` has no `{}`; hint: each model is a folder `<repo>/<model>/` holding config.pbtxt and numeric version folders",
        .path.display()
    )]
    ModelNotFound {
        /// The model asked for.
        model: String,
        /// Where its config.pbtxt was looked for.
        path: PathBuf,
    },

    /// config.pbtxt is not valid protobuf text format for `inference.ModelConfig`
    /// (a syntax error, a value of the wrong type, an unknown enum value, a repeated scalar).
    #[error(
        "{file}:{line}:{column}: {message}; hint: config.pbtxt is protobuf text format, e.g. `max_batch_size: 64` and `input [ {{ name: \"window\" data_type: TYPE_FP32 dims: [ 250, 25 ] }} ]`"
    )]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the parser expected and found.
        message: String,
    },

    /// config.pbtxt parses but says something gsinfer cannot serve.
    #[error("{file}: {message}; hint: {hint}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, naming the field and value.
        message: String,
        /// How to fix it.
        hint: String,
    },

    /// The platform (or backend) is not one that gsinfer runs.
    #[error(
        "{file}: platform `{value}` is not supported; hint: use platform `onnxruntime_onnx` or `tensorrt_plan` (or backend `onnxruntime` or `tensorrt`){}",
        if value == "ensemble" { "; to fuse detectors, list their pipelines in an [[ensemble]] of the TOML configuration (docs/configuration.md, Ensembles)" } else { "" }
    )]
    UnsupportedPlatform {
        /// The file.
        file: String,
        /// The platform or backend given.
        value: String,
    },

    /// config.pbtxt names the model differently from its folder.
    #[error(
        "`{}` names the model `{name}` but its folder is `{folder}`; hint: set `name: \"{folder}\"` or remove the name line",
        .path.display()
    )]
    NameMismatch {
        /// The config.pbtxt.
        path: PathBuf,
        /// The name in the file.
        name: String,
        /// The folder's name.
        folder: String,
    },

    /// The model folder holds no numeric version folder.
    #[error(
        "model folder `{}` has no numeric version folder; hint: put the model file in a version folder such as `{}`",
        .path.display(), .path.join("1").display()
    )]
    NoVersions {
        /// The model folder.
        path: PathBuf,
    },

    /// No version folder is allowed by `version_policy { specific { ... } }`.
    #[error(
        "no version folder in `{}` is listed by version_policy specific {wanted:?} (found {found:?}); hint: list an existing version or add its folder",
        .path.display()
    )]
    NoAllowedVersion {
        /// The model folder.
        path: PathBuf,
        /// The versions the policy lists.
        wanted: Vec<u64>,
        /// The version folders present.
        found: Vec<u64>,
    },

    /// A pipeline names a version (`<model>@<version>`) that the model's
    /// version policy does not select.
    #[error(
        "`{}` does not serve version {version}: its version_policy selects {served:?}; hint: name one of those (`<model>@<version>`), or change version_policy (e.g. `version_policy: {{ all: {{}} }}`)",
        .path.display()
    )]
    VersionNotServed {
        /// The model's config.pbtxt.
        path: PathBuf,
        /// The version asked for.
        version: u64,
        /// The versions the policy selects.
        served: Vec<u64>,
    },

    /// The selected version folder lacks the model file.
    #[error("model file `{}` does not exist; hint: {hint}", .path.display())]
    ModelFileMissing {
        /// Where the model file was expected.
        path: PathBuf,
        /// How to fix it, naming what the folder holds.
        hint: String,
    },
}

/// Shorthand for [`RepositoryError::Invalid`].
pub(crate) fn invalid(
    file: &str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> RepositoryError {
    RepositoryError::Invalid {
        file: file.to_owned(),
        message: message.into(),
        hint: hint.into(),
    }
}
