//! The appliance's files, checked with the tools that will consume them:
//! the systemd units (`systemd/check.sh`: systemd-analyze verify, sysusers,
//! tmpfiles, and an exposure of 2.0 or lower), the Ansible role
//! (`ansible-lint --profile production`), and the Debian package's inputs
//! (every cargo-deb asset exists; the packaged configuration is the example
//! with the packaged repository path). A missing tool skips its check with a
//! message; `.ci/run` installs them all.
//!
//! The heavy checks live outside `cargo test`: `ansible/test.sh` (a real
//! Ansible run against the image booted in QEMU) and `image/test.sh` (the
//! image's boot test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::gsinfer::find_program;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir`; panics with its output unless it succeeds.
fn run(dir: &Path, program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        program.display(),
        out.status
    );
    text
}

#[test]
fn units_verify_cleanly_and_expose_little() {
    if find_program(&["systemd-analyze"]).is_none() {
        common::skip("systemd-analyze not found (apt-get install systemd)");
        return;
    }
    let out = run(root(), Path::new("bash"), &["systemd/check.sh"]);
    eprintln!("{out}");
    assert!(out.contains("systemd-analyze verify: clean"), "{out}");
    assert!(
        out.contains("Overall exposure level for gsinfer.service"),
        "{out}"
    );
}

#[test]
fn ansible_role_passes_ansible_lint_production() {
    let Some(lint) = find_program(&["ansible-lint"]) else {
        common::skip("ansible-lint not found (pip install ansible-core ansible-lint)");
        return;
    };
    let out = run(
        &root().join("ansible"),
        &lint,
        &["--profile", "production", "--offline"],
    );
    eprintln!("{out}");
}

#[test]
fn every_package_asset_exists() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets listed");
    for asset in assets {
        let source = asset[0].as_str().unwrap();
        if source.starts_with("target/") {
            continue; // built by cargo
        }
        if let Some((dir, pattern)) = source.rsplit_once("/*") {
            // A glob such as docs/*.md (cargo-deb expands it): it must match.
            let matched = std::fs::read_dir(root().join(dir))
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(pattern));
            assert!(matched, "package asset {source} matches no file");
            continue;
        }
        assert!(
            root().join(source).is_file(),
            "package asset {source} is missing"
        );
    }
    let units = PathBuf::from(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    for f in ["gsinfer.service", "gsinfer.sysusers", "gsinfer.tmpfile"] {
        assert!(
            root().join(&units).join(f).is_file(),
            "{f} missing from {}",
            units.display()
        );
    }
}

/// The package carries ONNX Runtime's library where the packaged binary looks
/// for a bundled one (`<bin>/../lib/gsinfer`, `engine::onnxruntime::bundled_dir`),
/// with its licence, and scripts/deb.sh fetches it before cargo deb runs.
#[test]
fn the_package_carries_onnxruntime_where_gsinfer_looks_for_it() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("assets listed");
    let dest = |source: &str| {
        assets
            .iter()
            .find(|a| a[0].as_str() == Some(source))
            .and_then(|a| a[1].as_str())
            .unwrap_or_else(|| panic!("no package asset {source}"))
            .to_string()
    };
    let bin = Path::new("/").join(dest("target/release/gsinfer"));
    let lib = Path::new("/").join(dest("target/lib/gsinfer/libonnxruntime.so.*"));
    assert_eq!(
        bin.parent().unwrap().join("lib/gsinfer"),
        lib.components().collect::<PathBuf>(),
        "the library must go to <bin>/../lib/gsinfer"
    );
    assert!(dest("target/lib/gsinfer/LICENSE").contains("doc/gsinfer"));
    let script = std::fs::read_to_string(root().join("scripts/deb.sh")).unwrap();
    let fetch = script.find("tools/fetch_onnxruntime.sh target/lib/gsinfer");
    let deb = script.find("cargo deb --no-build");
    assert!(
        matches!((fetch, deb), (Some(f), Some(d)) if f < d),
        "scripts/deb.sh must fetch onnxruntime before cargo deb"
    );
}

#[test]
fn packaged_configuration_is_the_example_serving_the_packaged_repository() {
    let example = std::fs::read_to_string(root().join("config/gsinfer.example.toml")).unwrap();
    let packaged = std::fs::read_to_string(root().join("debian/gsinfer.toml")).unwrap();
    let expected = example.replace(
        "path = \"../model_repository\"",
        "path = \"/usr/share/gsinfer/model_repository\"",
    );
    assert_ne!(expected, example, "the example's repository line changed");
    assert_eq!(
        packaged, expected,
        "debian/gsinfer.toml must be config/gsinfer.example.toml with the packaged repository path; \
         regenerate it with: sed 's|path = \"../model_repository\"|path = \"/usr/share/gsinfer/model_repository\"|' \
         config/gsinfer.example.toml > debian/gsinfer.toml"
    );
    let config = gsinfer::config::Config::load(&root().join("debian/gsinfer.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The package ships exactly the models the packaged configuration serves.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for p in &config.pipelines {
        assert!(
            manifest.contains(&format!(
                "usr/share/gsinfer/model_repository/{}/1/",
                p.model
            )),
            "the package does not ship model {}",
            p.model
        );
    }
}
