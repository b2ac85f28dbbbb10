//! The repository on disk: model folders, version folders, model files.
//!
//! Layout (Triton's): `<root>/<model>/config.pbtxt` and
//! `<root>/<model>/<version>/<model file>`, version folders having numeric
//! names. Other entries (a README, label files, `.git`) are left alone. The
//! repository is only read.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::config::ModelConfig;
use super::error::RepositoryError;
use super::schedule::VersionPolicy;

/// Name of the configuration file in each model folder.
const CONFIG_FILE: &str = "config.pbtxt";

/// Largest config.pbtxt read, in bytes (Triton's configurations take a few
/// KB; the repository's largest is under 1 KB).
pub const MAX_CONFIG_PBTXT_BYTES: u64 = 1 << 20;

/// A Triton-layout model repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
}

/// A model ready to be turned into an engine: its configuration and one of
/// the versions its policy selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The model's name: its folder's name.
    pub name: String,
    /// The validated config.pbtxt, with `name` filled in.
    pub config: ModelConfig,
    /// The version loaded: the one asked for (`<model>@<version>`), else
    /// the highest the version policy selects.
    pub version: u64,
    /// Every version the version policy selects, ascending (each is served
    /// over KServe; `version` is one of them).
    pub versions: Vec<u64>,
    /// The model file: `<root>/<model>/<version>/<default_model_filename or model.onnx/model.plan>`.
    pub model_path: PathBuf,
    /// Things the operator should know (unsupported fields skipped, versions
    /// not served), each a full sentence naming config.pbtxt's path.
    pub warnings: Vec<String>,
}

impl ModelRepository {
    /// Opens the repository at `root`. Nothing else is read yet.
    ///
    /// Errors: [`RepositoryError::NotADirectory`] when `root` is not a directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepositoryError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RepositoryError::NotADirectory { path: root });
        }
        Ok(ModelRepository { root })
    }

    /// The repository's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The names of the folders that hold a config.pbtxt, sorted.
    ///
    /// Errors: [`RepositoryError::Io`] when the root cannot be listed,
    /// [`RepositoryError::NonUtf8Name`] for a model folder whose name is not UTF-8.
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        let mut names = Vec::new();
        for entry in read_dir(&self.root)? {
            let path = entry.path();
            if !path.join(CONFIG_FILE).is_file() {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(_) => return Err(RepositoryError::NonUtf8Name { path }),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Splits a pipeline's model reference: `<model>@<version>` names a
    /// version, a plain `<model>` the default (highest selected) one. A
    /// folder whose whole name holds an `@` (`<root>/a@1/config.pbtxt`) is a
    /// plain name.
    pub fn split_reference<'a>(&self, reference: &'a str) -> (&'a str, Option<u64>) {
        match reference.rsplit_once('@') {
            Some((name, v))
                if !self.root.join(reference).join(CONFIG_FILE).is_file()
                    && version_number(v).is_some() =>
            {
                (name, version_number(v))
            }
            _ => (reference, None),
        }
    }

    /// Reads and validates `<root>/<model>/config.pbtxt`, then picks the
    /// version folder and the model file in it. `reference` is a model
    /// name, for the highest version the version policy selects, or
    /// `<model>@<version>` for that version, which the policy must select.
    ///
    /// Errors: [`RepositoryError::InvalidModelName`],
    /// [`RepositoryError::ModelNotFound`], [`RepositoryError::Io`], any
    /// error of [`ModelConfig::parse`] (naming the file's path),
    /// [`RepositoryError::NameMismatch`], [`RepositoryError::NoVersions`],
    /// [`RepositoryError::NoAllowedVersion`],
    /// [`RepositoryError::VersionNotServed`] and
    /// [`RepositoryError::ModelFileMissing`].
    pub fn load(&self, reference: &str) -> Result<ModelEntry, RepositoryError> {
        let (model, wanted) = self.split_reference(reference);
        if model.is_empty() || model == "." || model == ".." || model.contains(['/', '\\', '\0']) {
            return Err(RepositoryError::InvalidModelName {
                name: model.to_owned(),
            });
        }
        let model_dir = self.root.join(model);
        let config_path = model_dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(RepositoryError::ModelNotFound {
                model: model.to_owned(),
                path: config_path,
            });
        }
        let text = read_config_text(&config_path)?;
        let file = config_path.display().to_string();
        let (mut config, mut warnings) = ModelConfig::parse_file(&text, &file)?;
        if config.name.is_empty() {
            config.name = model.to_owned();
        } else if config.name != model {
            return Err(RepositoryError::NameMismatch {
                path: config_path,
                name: config.name,
                folder: model.to_owned(),
            });
        }

        let mut available: Vec<u64> = read_dir(&model_dir)?
            .filter(|e| e.path().is_dir())
            .filter_map(|e| version_number(&e.file_name().to_string_lossy()))
            .collect();
        available.sort_unstable();
        available.dedup();
        if available.is_empty() {
            return Err(RepositoryError::NoVersions { path: model_dir });
        }
        let versions = config.version_policy.selected(&available);
        let version = match (versions.last(), wanted) {
            (Some(_), Some(v)) if versions.contains(&v) => v,
            (Some(_), Some(v)) => {
                return Err(RepositoryError::VersionNotServed {
                    path: config_path,
                    version: v,
                    served: versions,
                })
            }
            (Some(&v), None) => v,
            (None, _) => {
                let wanted = match &config.version_policy {
                    VersionPolicy::Specific { versions } => versions.clone(),
                    _ => Vec::new(),
                };
                return Err(RepositoryError::NoAllowedVersion {
                    path: model_dir,
                    wanted,
                    found: available,
                });
            }
        };
        warnings.extend(version_warnings(&config.version_policy, &available, &file));

        let version_dir = version_dir(&model_dir, version)?;
        let file_name = config
            .default_model_filename
            .clone()
            .unwrap_or_else(|| config.platform.default_model_filename().to_owned());
        let model_path = version_dir.join(&file_name);
        if !model_path.is_file() {
            let hint = missing_file_hint(&version_dir, &file_name, &config);
            return Err(RepositoryError::ModelFileMissing {
                path: model_path,
                hint,
            });
        }
        Ok(ModelEntry {
            name: model.to_owned(),
            config,
            version,
            versions,
            model_path,
            warnings,
        })
    }
}

fn read_dir(dir: &Path) -> Result<impl Iterator<Item = fs::DirEntry>, RepositoryError> {
    let io_error = |source: io::Error| RepositoryError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = fs::read_dir(dir).map_err(io_error)?;
    let entries: Vec<fs::DirEntry> = entries.collect::<Result<_, _>>().map_err(io_error)?;
    Ok(entries.into_iter())
}

/// The version number of a folder name made only of ASCII digits.
fn version_number(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The folder of `version`: `<model>/<version>`, or a zero-padded spelling of it (`007`).
fn version_dir(model_dir: &Path, version: u64) -> Result<PathBuf, RepositoryError> {
    let plain = model_dir.join(version.to_string());
    if plain.is_dir() {
        return Ok(plain);
    }
    let mut spellings: Vec<PathBuf> = read_dir(model_dir)?
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            p.file_name()
                .and_then(|n| version_number(&n.to_string_lossy()))
                == Some(version)
        })
        .collect();
    spellings.sort();
    Ok(spellings.into_iter().next().unwrap_or(plain))
}

/// Warnings for versions present or listed but not served.
fn version_warnings(policy: &VersionPolicy, available: &[u64], file: &str) -> Vec<String> {
    match policy {
        VersionPolicy::Specific { versions } => versions
            .iter()
            .filter(|v| !available.contains(v))
            .map(|v| {
                format!("{file}: version_policy specific lists version {v}, which has no folder")
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// How to fix a missing model file, naming what the version folder holds.
fn missing_file_hint(version_dir: &Path, file_name: &str, config: &ModelConfig) -> String {
    let mut present: Vec<String> = fs::read_dir(version_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut hint = format!(
        "put the {} model file there as `{file_name}`",
        config.platform.triton_name()
    );
    if config.default_model_filename.is_none() {
        hint.push_str(", or name its file with `default_model_filename: \"...\"` in config.pbtxt");
    } else {
        hint.push_str(", or correct default_model_filename in config.pbtxt");
    }
    match present.as_slice() {
        [] => hint.push_str(" (the folder is empty)"),
        files => hint.push_str(&format!(" (the folder holds: {})", files.join(", "))),
    }
    hint
}

/// Reads a config.pbtxt of at most [`MAX_CONFIG_PBTXT_BYTES`].
fn read_config_text(path: &Path) -> Result<String, RepositoryError> {
    use std::io::Read;
    let io_err = |source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_PBTXT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > MAX_CONFIG_PBTXT_BYTES {
        return Err(RepositoryError::ConfigTooLarge {
            path: path.to_path_buf(),
            size: fs::metadata(path).map_or(text.len() as u64, |m| m.len()),
            limit: MAX_CONFIG_PBTXT_BYTES,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{DataType, InstanceKind, Platform};

    const IO: &str = "input { name: \"x\" data_type: TYPE_FP32 dims: 1 }\noutput { name: \"y\" data_type: TYPE_FP32 dims: 1 }\n";

    /// Writes `<repo>/<model>/config.pbtxt` and each `<repo>/<model>/<file>` (folders created).
    fn model(repo: &Path, name: &str, config: &str, files: &[&str]) {
        let dir = repo.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(CONFIG_FILE), config).unwrap();
        for file in files {
            let path = dir.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"not really a model").unwrap();
        }
    }

    fn onnx(extra: &str) -> String {
        format!("platform: \"onnxruntime_onnx\"\n{extra}\n{IO}")
    }

    #[test]
    fn an_oversized_config_pbtxt_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let padding = "# padding\n".repeat((MAX_CONFIG_PBTXT_BYTES / 10) as usize + 1);
        model(
            dir.path(),
            "big",
            &format!("{padding}{}", onnx("")),
            &["1/model.onnx"],
        );
        let repo = ModelRepository::open(dir.path()).unwrap();
        let err = repo.load("big").unwrap_err();
        assert!(
            matches!(err, RepositoryError::ConfigTooLarge { limit, .. } if limit == MAX_CONFIG_PBTXT_BYTES),
            "{err}"
        );
        model(dir.path(), "small", &onnx(""), &["1/model.onnx"]);
        repo.load("small").unwrap();
    }

    #[test]
    fn open_refuses_what_is_not_a_directory() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("file");
        fs::write(&file, "").unwrap();
        for path in [file, temp.path().join("missing")] {
            let e = ModelRepository::open(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{}` is not a directory", path.display())),
                "{e}"
            );
        }
        assert_eq!(
            ModelRepository::open(temp.path()).unwrap().root(),
            temp.path()
        );
    }

    #[test]
    fn model_names_lists_folders_with_a_config_sorted() {
        let temp = tempfile::tempdir().unwrap();
        model(temp.path(), "zeta", &onnx(""), &[]);
        model(temp.path(), "alpha", &onnx(""), &[]);
        fs::create_dir_all(temp.path().join("no_config/1")).unwrap();
        fs::write(temp.path().join("README.md"), "models").unwrap();
        let repo = ModelRepository::open(temp.path()).unwrap();
        assert_eq!(repo.model_names().unwrap(), ["alpha", "zeta"]);
    }

    #[test]
    fn load_serves_the_highest_version_the_policy_allows() {
        let temp = tempfile::tempdir().unwrap();
        let files = [
            "1/model.onnx",
            "2/model.onnx",
            "10/model.onnx",
            "latest/model.onnx",
            "3/README",
        ];
        model(temp.path(), "plain", &onnx(""), &files);
        model(
            temp.path(),
            "all",
            &onnx("version_policy: { all: {} }"),
            &files,
        );
        model(
            temp.path(),
            "specific",
            &onnx("version_policy: { specific: { versions: [ 1, 2, 5 ] } }"),
            &files,
        );
        let repo = ModelRepository::open(temp.path()).unwrap();

        let plain = repo.load("plain").unwrap();
        assert_eq!(plain.version, 10);
        assert_eq!(plain.model_path, temp.path().join("plain/10/model.onnx"));
        assert_eq!(plain.name, "plain");
        assert_eq!(plain.config.name, "plain");
        assert!(plain.warnings.is_empty(), "{:?}", plain.warnings);

        assert_eq!(plain.versions, [10], "latest {{ num_versions: 1 }}");

        let all = repo.load("all").unwrap();
        assert_eq!(all.version, 10);
        assert_eq!(all.versions, [1, 2, 3, 10]);
        assert!(all.warnings.is_empty(), "{:?}", all.warnings);
        // A pipeline or request naming a selected version gets that one.
        let one = repo.load("all@1").unwrap();
        assert_eq!((one.name.as_str(), one.version), ("all", 1));
        assert_eq!(one.model_path, temp.path().join("all/1/model.onnx"));
        let e = repo.load("plain@2").unwrap_err();
        assert!(
            matches!(&e, RepositoryError::VersionNotServed { version: 2, served, .. } if served == &[10]),
            "{e}"
        );
        assert!(e.to_string().contains("version_policy selects [10]"), "{e}");

        let specific = repo.load("specific").unwrap();
        assert_eq!(specific.version, 2);
        assert_eq!(specific.versions, [1, 2]);
        assert_eq!(
            specific.model_path,
            temp.path().join("specific/2/model.onnx")
        );
        assert!(specific
            .warnings
            .iter()
            .any(|w| w.contains("lists version 5, which has no folder")));
    }

    #[test]
    fn load_reports_missing_versions_and_files() {
        let temp = tempfile::tempdir().unwrap();
        model(temp.path(), "none", &onnx(""), &["v1/model.onnx"]);
        model(
            temp.path(),
            "unlisted",
            &onnx("version_policy { specific { versions: 4 } }"),
            &["1/model.onnx"],
        );
        // A TensorRT model whose version folder holds only the ONNX file.
        let plan_config = format!("platform: \"tensorrt_plan\"\n{IO}");
        model(temp.path(), "plan", &plan_config, &["1/model.onnx"]);
        let repo = ModelRepository::open(temp.path()).unwrap();

        let e = repo.load("none").unwrap_err().to_string();
        assert!(e.contains("has no numeric version folder"), "{e}");
        let e = repo.load("unlisted").unwrap_err();
        assert!(
            matches!(&e, RepositoryError::NoAllowedVersion { wanted, found, .. } if wanted == &[4] && found == &[1]),
            "{e}"
        );

        let e = repo.load("plan").unwrap_err();
        let expected = temp.path().join("plan/1/model.plan");
        assert!(
            matches!(&e, RepositoryError::ModelFileMissing { path, .. } if path == &expected),
            "{e}"
        );
        let e = e.to_string();
        assert!(
            e.contains(&format!(
                "model file `{}` does not exist",
                expected.display()
            )),
            "{e}"
        );
        assert!(e.contains("default_model_filename"), "{e}");
        assert!(e.contains("the folder holds: model.onnx"), "{e}");
    }

    #[test]
    fn load_uses_default_model_filename() {
        let temp = tempfile::tempdir().unwrap();
        model(
            temp.path(),
            "m",
            &onnx("default_model_filename: \"forecaster.onnx\""),
            &["1/forecaster.onnx"],
        );
        let entry = ModelRepository::open(temp.path())
            .unwrap()
            .load("m")
            .unwrap();
        assert_eq!(entry.model_path, temp.path().join("m/1/forecaster.onnx"));
    }

    #[test]
    fn load_checks_the_name_and_names_the_file_in_errors() {
        let temp = tempfile::tempdir().unwrap();
        model(
            temp.path(),
            "m",
            &onnx("name: \"other\""),
            &["1/model.onnx"],
        );
        model(
            temp.path(),
            "broken",
            "platform: \"onnxruntime_onnx\"\nmax_batch_size: 8 8\n",
            &["1/model.onnx"],
        );
        model(
            temp.path(),
            "warned",
            &onnx("model_warmup { name: \"w\" }"),
            &["1/model.onnx"],
        );
        let repo = ModelRepository::open(temp.path()).unwrap();

        let e = repo.load("m").unwrap_err().to_string();
        assert!(
            e.contains("names the model `other` but its folder is `m`"),
            "{e}"
        );
        let e = repo.load("broken").unwrap_err().to_string();
        let file = temp.path().join("broken/config.pbtxt");
        assert!(e.starts_with(&format!("{}:2:19: ", file.display())), "{e}");
        let warned = repo.load("warned").unwrap();
        let file = temp.path().join("warned/config.pbtxt");
        assert_eq!(
            warned.warnings,
            [format!(
                "{}: field `model_warmup` is not supported by gsinfer and is ignored",
                file.display()
            )]
        );
        for bad in ["", "..", "a/b", "."] {
            assert!(
                matches!(
                    repo.load(bad),
                    Err(RepositoryError::InvalidModelName { .. })
                ),
                "{bad}"
            );
        }
        let e = repo.load("absent").unwrap_err().to_string();
        assert!(e.contains("model `absent` has no"), "{e}");
    }

    #[test]
    fn zero_padded_version_folders_count_by_number() {
        let temp = tempfile::tempdir().unwrap();
        model(
            temp.path(),
            "m",
            &onnx(""),
            &["007/model.onnx", "3/model.onnx"],
        );
        let entry = ModelRepository::open(temp.path())
            .unwrap()
            .load("m")
            .unwrap();
        assert_eq!(entry.version, 7);
        assert_eq!(entry.model_path, temp.path().join("m/007/model.onnx"));
    }

    /// The example shipped in the repository loads as documented.
    #[test]
    fn the_shipped_example_repository_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
        let repo = ModelRepository::open(&root).unwrap();
        assert!(repo
            .model_names()
            .unwrap()
            .contains(&"smap_lstm".to_owned()));
        let entry = repo.load("smap_lstm").unwrap();
        assert!(entry.warnings.is_empty(), "{:?}", entry.warnings);
        assert_eq!(entry.version, 1);
        assert_eq!(entry.model_path, root.join("smap_lstm/1/model.onnx"));
        let config = &entry.config;
        assert_eq!(config.name, "smap_lstm");
        assert_eq!(config.platform, Platform::OnnxRuntimeOnnx);
        assert_eq!(config.max_batch_size, 64);
        assert_eq!(config.inputs.len(), 1);
        assert_eq!(
            (config.inputs[0].name.as_str(), config.inputs[0].data_type),
            ("window", DataType::Fp32)
        );
        assert_eq!(config.inputs[0].dims, [250, 25]);
        assert_eq!(
            (
                config.outputs[0].name.as_str(),
                config.outputs[0].dims.as_slice()
            ),
            ("forecast", &[10][..])
        );
        let batching = config.dynamic_batching.as_ref().unwrap();
        assert_eq!(batching.preferred_batch_size, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(batching.max_queue_delay_us, 20000);
        assert_eq!(
            (config.instance_count, config.instance_kind),
            (1, InstanceKind::Cpu)
        );
        assert_eq!(
            config.version_policy,
            VersionPolicy::Latest { num_versions: 1 }
        );
    }
}
