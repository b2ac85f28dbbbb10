//! Every configuration snippet the README and docs/ show parses with
//! gsinfer, so a reader who copies one gets a working file:
//!
//! - a ```` ```toml ```` block is merged into the shipped example
//!   configuration (its tables replace the example's, its arrays of tables
//!   are appended; [`config/reference.toml`] is the base where the snippet
//!   names per-channel models) and loaded with gsinfer's own loader and
//!   validation (the files it names under /etc/gsinfer/ made in a test
//!   folder: a self-signed certificate for `.pem`, its key for `.key`);
//! - a ```` ```pbtxt ```` block is parsed as a config.pbtxt: whole when it
//!   declares inputs, else appended to the example model's.
//!
//! Blocks that are not meant to be copied as they stand (side-by-side
//! comparisons, shell sessions) carry another info string (`text`, `sh`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gsinfer::config::Config;
use gsinfer::repository::ModelConfig;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks with info string `lang` in README.md and docs/*.md:
/// (file, line of the fence, body).
fn blocks(lang: &str) -> Vec<(PathBuf, usize, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut open: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            let fence = line.trim_start().strip_prefix("```");
            match (&mut open, fence) {
                (None, Some(info)) if info.trim() == lang => open = Some((n + 1, String::new())),
                (Some(_), Some(_)) => {
                    let (at, body) = open.take().unwrap();
                    found.push((file.clone(), at, body));
                }
                (Some((_, body)), None) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, _) => {}
            }
        }
        assert!(
            open.is_none(),
            "{}: a ```{lang} block is never closed",
            file.display()
        );
    }
    found
}

/// `snippet`'s tables merged into `base`: tables replace, arrays of tables extend.
fn merge(base: &mut toml::Table, snippet: toml::Table) {
    for (key, value) in snippet {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Array(have)), toml::Value::Array(more)) => have.extend(more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[test]
fn every_toml_snippet_loads_as_part_of_the_shipped_configuration() {
    let snippets = blocks("toml");
    assert!(
        snippets.len() >= 3,
        "the docs' TOML snippets were not found: {snippets:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    // What a snippet's PEM files hold: one self-signed certificate and its key.
    let certificate = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    for (file, line, body) in snippets {
        let at = format!("{}:{line}", file.display());
        let snippet: toml::Table =
            toml::from_str(&body).unwrap_or_else(|e| panic!("{at}: not TOML: {e}\n{body}"));
        let base = if body.contains("{channel}") {
            "config/reference.toml"
        } else {
            "config/gsinfer.example.toml"
        };
        let mut config: toml::Table =
            toml::from_str(&std::fs::read_to_string(root().join(base)).unwrap()).unwrap();
        merge(&mut config, snippet);
        // The shipped files name the repository relative to config/; the
        // files a snippet names under /etc/gsinfer/ are made (mode 600) in
        // a folder of the test's.
        let path = dir.path().join("snippet.toml");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let text = toml::to_string(&config)
            .unwrap()
            .replace(
                "\"../model_repository\"",
                &format!(
                    "{:?}",
                    root().join("model_repository").display().to_string()
                ),
            )
            .replace("/etc/gsinfer/", &format!("{}/", etc.display()));
        for named in body.split('"').filter(|s| s.starts_with("/etc/gsinfer/")) {
            let file = etc.join(named.trim_start_matches("/etc/gsinfer/"));
            let content = match file.extension().and_then(|e| e.to_str()) {
                Some("pem") => certificate.cert.pem(),
                Some("key") => certificate.signing_key.serialize_pem(),
                _ => "a secret\n".to_string(),
            };
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        if let Err(e) = Config::load(&path) {
            panic!("{at}: the snippet, merged into {base}, does not load:\n{e}\n{body}");
        }
    }
}

#[test]
fn every_pbtxt_snippet_parses_as_a_config_pbtxt() {
    let snippets = blocks("pbtxt");
    assert!(
        !snippets.is_empty(),
        "the docs' config.pbtxt snippets were not found"
    );
    let example =
        std::fs::read_to_string(root().join("model_repository/smap_lstm/config.pbtxt")).unwrap();
    for (file, line, body) in snippets {
        let text = if body.contains("input") {
            body.clone()
        } else {
            format!("{example}\n{body}")
        };
        match ModelConfig::parse(&text) {
            Ok((_, warnings)) => assert!(
                warnings.is_empty(),
                "{}:{line}: warnings {warnings:?}\n{body}",
                file.display()
            ),
            Err(e) => panic!("{}:{line}: refused: {e}\n{body}", file.display()),
        }
    }
}
