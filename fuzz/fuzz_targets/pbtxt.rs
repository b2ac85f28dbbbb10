//! The config.pbtxt reader (`ModelConfig::parse`: the pre-pass that skips
//! fields gsinfer does not honour, prost-reflect's text-format parser, and
//! the validation into `ModelConfig`) on arbitrary text. Checks: a syntax
//! error points inside the text; an accepted config holds what
//! `ModelConfig` promises (inputs and outputs present with unique names,
//! dims positive or -1, preferred batch sizes within max_batch_size, at
//! least one instance, a plain default_model_filename); every warning
//! names the file; and the config written back as config.pbtxt parses to
//! the same config, without warnings.
#![no_main]

use std::fmt::Write;

use gsinfer::repository::{
    InstanceKind, ModelConfig, RepositoryError, TensorConfig, VersionPolicy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config, warnings) = match ModelConfig::parse(text) {
        Ok(parsed) => parsed,
        Err(RepositoryError::Syntax { line, column, .. }) => {
            assert!(line >= 1 && column >= 1);
            assert!(line <= text.split('\n').count(), "line {line} of {text:?}");
            let text_line = text.split('\n').nth(line - 1).unwrap_or("");
            assert!(
                column <= text_line.chars().count() + 1,
                "column {column} of line {line} {text_line:?}"
            );
            return;
        }
        Err(_) => return,
    };
    for w in &warnings {
        assert!(w.starts_with("config.pbtxt: "), "{w}");
    }
    check(&config);
    let printed = print(&config);
    let (again, warnings) = ModelConfig::parse(&printed)
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    assert!(warnings.is_empty(), "{warnings:?}\n{printed}");
    assert_eq!(again, config, "\n{printed}");
});

fn check(c: &ModelConfig) {
    for tensors in [&c.inputs, &c.outputs] {
        assert!(!tensors.is_empty());
        for (i, t) in tensors.iter().enumerate() {
            assert!(!t.name.is_empty());
            assert!(tensors[..i].iter().all(|u| u.name != t.name));
            assert!(!t.dims.is_empty());
            let dims_ok = |d: &[i64]| d.iter().all(|&x| x > 0 || x == -1);
            assert!(dims_ok(&t.dims), "{t:?}");
            assert!(t.reshape.as_deref().is_none_or(dims_ok), "{t:?}");
        }
    }
    if let Some(d) = &c.dynamic_batching {
        for &s in &d.preferred_batch_size {
            assert!(s >= 1 && (c.max_batch_size == 0 || s <= c.max_batch_size));
        }
    }
    assert!(c.instance_count >= 1);
    match &c.version_policy {
        VersionPolicy::Latest { num_versions } => assert!(*num_versions >= 1),
        VersionPolicy::Specific { versions } => assert!(!versions.is_empty()),
        VersionPolicy::All => {}
    }
    if let Some(f) = &c.default_model_filename {
        assert!(!f.is_empty() && !f.contains(['/', '\\']) && f != "." && f != "..");
    }
}

/// A text-format string literal.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\{:03o}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[ {} ]", items.join(", "))
}

fn tensors(out: &mut String, field: &str, tensors: &[TensorConfig]) {
    writeln!(out, "{field} [").unwrap();
    for (i, t) in tensors.iter().enumerate() {
        let comma = if i + 1 < tensors.len() { "," } else { "" };
        let reshape = t
            .reshape
            .as_ref()
            .map(|r| format!(" reshape: {{ shape: {} }}", list(r)))
            .unwrap_or_default();
        writeln!(
            out,
            "  {{ name: {} data_type: {} dims: {}{reshape} }}{comma}",
            quote(&t.name),
            t.data_type.triton_name(),
            list(&t.dims)
        )
        .unwrap();
    }
    writeln!(out, "]").unwrap();
}

/// `c` as config.pbtxt.
fn print(c: &ModelConfig) -> String {
    let mut out = String::new();
    writeln!(out, "name: {}", quote(&c.name)).unwrap();
    writeln!(out, "platform: {}", quote(c.platform.triton_name())).unwrap();
    if let Some(b) = &c.backend {
        writeln!(out, "backend: {}", quote(b)).unwrap();
    }
    writeln!(out, "max_batch_size: {}", c.max_batch_size).unwrap();
    tensors(&mut out, "input", &c.inputs);
    tensors(&mut out, "output", &c.outputs);
    if let Some(d) = &c.dynamic_batching {
        writeln!(
            out,
            "dynamic_batching {{ preferred_batch_size: {} max_queue_delay_microseconds: {} }}",
            list(&d.preferred_batch_size),
            d.max_queue_delay_us
        )
        .unwrap();
    }
    let kind = match c.instance_kind {
        InstanceKind::Auto => "KIND_AUTO",
        InstanceKind::Gpu => "KIND_GPU",
        InstanceKind::Cpu => "KIND_CPU",
    };
    let mut left = c.instance_count;
    while left > 0 {
        let count = left.min(i32::MAX as u32);
        writeln!(out, "instance_group {{ count: {count} kind: {kind} }}").unwrap();
        left -= count;
    }
    writeln!(out, "optimization {{").unwrap();
    if c.cuda_graphs {
        writeln!(out, "  cuda {{ graphs: true }}").unwrap();
    }
    if let Some(t) = &c.tensorrt {
        let precision = if t.fp16 { "FP16" } else { "FP32" };
        let workspace = t
            .workspace_bytes
            .map(|w| format!(" parameters {{ key: \"max_workspace_size_bytes\" value: \"{w}\" }}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  execution_accelerators {{ gpu_execution_accelerator [ {{ name: \"tensorrt\" parameters {{ key: \"precision_mode\" value: \"{precision}\" }}{workspace} }} ] }}"
        )
        .unwrap();
    }
    writeln!(out, "}}").unwrap();
    match &c.version_policy {
        VersionPolicy::Latest { num_versions } => writeln!(
            out,
            "version_policy: {{ latest: {{ num_versions: {num_versions} }} }}"
        )
        .unwrap(),
        VersionPolicy::All => writeln!(out, "version_policy: {{ all: {{ }} }}").unwrap(),
        VersionPolicy::Specific { versions } => writeln!(
            out,
            "version_policy: {{ specific: {{ versions: {} }} }}",
            list(versions)
        )
        .unwrap(),
    }
    for (k, v) in &c.parameters {
        writeln!(
            out,
            "parameters {{ key: {} value: {{ string_value: {} }} }}",
            quote(k),
            quote(v)
        )
        .unwrap();
    }
    if let Some(f) = &c.default_model_filename {
        writeln!(out, "default_model_filename: {}", quote(f)).unwrap();
    }
    out
}
