//! How a model is scheduled and which version is served: the
//! `dynamic_batching`, `instance_group` and `version_policy` sections of
//! config.pbtxt, with Triton's defaults (a count of 0 is 1, no policy is
//! `latest { num_versions: 1 }`).

use prost_reflect::DynamicMessage;

use super::config::{get, get_int, get_ints, get_message, get_messages};
use super::error::{invalid, RepositoryError};

/// `dynamic_batching { ... }`: Triton's batcher settings, which gsinfer's
/// fixed-latency micro-batcher takes as its starting point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DynamicBatching {
    /// `preferred_batch_size`: batch sizes worth dispatching at once; each is
    /// in `1..=max_batch_size` (when `max_batch_size > 0`). May be empty.
    pub preferred_batch_size: Vec<u32>,
    /// `max_queue_delay_microseconds`: longest a request waits for a batch, in µs.
    pub max_queue_delay_us: u64,
}

/// Where a model's instances run (`instance_group { kind: ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceKind {
    /// `KIND_AUTO`: on the GPU when there is one, else on the CPU.
    Auto,
    /// `KIND_GPU`.
    Gpu,
    /// `KIND_CPU`.
    Cpu,
}

/// Which version folders a model is served from (`version_policy`, as
/// Triton defines it): every selected version is loaded and served over
/// KServe; a request or pipeline that names no version gets the highest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// `latest { num_versions: N }`: the N highest versions (N >= 1).
    Latest {
        /// How many of the highest versions Triton would serve.
        num_versions: u32,
    },
    /// `all { }`: every version.
    All,
    /// `specific { versions: [...] }`: the listed versions (never empty).
    Specific {
        /// The versions listed, in file order.
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl VersionPolicy {
    /// The versions served out of the `available` version folders, in
    /// ascending order: the `num_versions` highest (`latest`), all (`all`),
    /// or those listed that exist (`specific`); empty if none is allowed.
    pub fn selected(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = available.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::Latest { num_versions } => {
                let keep = (*num_versions as usize).min(v.len());
                v.split_off(v.len() - keep)
            }
            VersionPolicy::All => v,
            VersionPolicy::Specific { versions } => {
                v.retain(|x| versions.contains(x));
                v
            }
        }
    }

    /// The default version out of `available`: the highest one selected,
    /// or `None` if the policy allows none.
    pub fn select(&self, available: &[u64]) -> Option<u64> {
        self.selected(available).last().copied()
    }
}

pub(crate) fn dynamic_batching(
    d: &DynamicMessage,
    max_batch_size: u32,
    file: &str,
) -> Result<DynamicBatching, RepositoryError> {
    let preferred = get_ints(d, "preferred_batch_size");
    let preferred_batch_size = preferred
        .iter()
        .map(|&size| match u32::try_from(size) {
            Ok(s) if s >= 1 && (max_batch_size == 0 || s <= max_batch_size) => Ok(s),
            _ => Err(invalid(
                file,
                format!("dynamic_batching preferred_batch_size {size} is not in 1..={max_batch_size} (max_batch_size)"),
                "list batch sizes between 1 and max_batch_size, e.g. `preferred_batch_size: [ 8, 16 ]`",
            )),
        })
        .collect::<Result<_, _>>()?;
    let max_queue_delay_us = get(d, "max_queue_delay_microseconds")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    Ok(DynamicBatching {
        preferred_batch_size,
        max_queue_delay_us,
    })
}

pub(crate) fn instance_groups(
    m: &DynamicMessage,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<(u32, InstanceKind), RepositoryError> {
    let groups = get_messages(m, "instance_group");
    if groups.is_empty() {
        return Ok((1, InstanceKind::Auto));
    }
    let mut total: u32 = 0;
    let mut kind = None;
    for group in &groups {
        let count = get_int(group, "count");
        let count = match u32::try_from(count) {
            Ok(0) => 1,
            Ok(c) => c,
            Err(_) => {
                return Err(invalid(
                    file,
                    format!("instance_group count {count} is negative"),
                    "use a count of 1 or more",
                ))
            }
        };
        total = total.saturating_add(count);
        let this = match get_int(group, "kind") {
            0 => InstanceKind::Auto,
            1 => InstanceKind::Gpu,
            2 => InstanceKind::Cpu,
            _ => {
                return Err(invalid(
                    file,
                    "instance_group kind KIND_MODEL is not supported",
                    "use KIND_CPU (tract), KIND_GPU (TensorRT) or KIND_AUTO",
                ))
            }
        };
        if kind.is_some_and(|k| k != this) {
            return Err(invalid(
                file,
                "instance groups of different kinds are not supported",
                "give every instance_group the same kind, or use one group",
            ));
        }
        kind = Some(this);
        let gpus = get_ints(group, "gpus");
        if !gpus.is_empty() {
            warnings.push(format!(
                "{file}: instance_group gpus {gpus:?} is ignored; gsinfer runs every instance on its one GPU"
            ));
        }
    }
    Ok((total, kind.unwrap_or(InstanceKind::Auto)))
}

pub(crate) fn version_policy(
    policy: &DynamicMessage,
    file: &str,
) -> Result<VersionPolicy, RepositoryError> {
    if let Some(latest) = get_message(policy, "latest") {
        let n = get(&latest, "num_versions")
            .and_then(|v| v.as_u32())
            .unwrap_or(0);
        if n == 0 {
            return Err(invalid(
                file,
                "version_policy latest has num_versions 0",
                "use `version_policy: { latest: { num_versions: 1 } }`",
            ));
        }
        return Ok(VersionPolicy::Latest { num_versions: n });
    }
    if let Some(specific) = get_message(policy, "specific") {
        let listed = get_ints(&specific, "versions");
        let versions: Vec<u64> = listed
            .iter()
            .filter_map(|&v| u64::try_from(v).ok())
            .collect();
        if versions.is_empty() || versions.len() != listed.len() {
            return Err(invalid(
                file,
                format!("version_policy specific lists versions {listed:?}"),
                "list one or more version folder numbers, e.g. `specific: { versions: [ 2 ] }`",
            ));
        }
        return Ok(VersionPolicy::Specific { versions });
    }
    if policy.has_field_by_name("all") {
        return Ok(VersionPolicy::All);
    }
    Ok(VersionPolicy::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::ModelConfig;

    const IO: &str = "input { name: \"x\" data_type: TYPE_FP32 dims: 1 }\noutput { name: \"y\" data_type: TYPE_FP32 dims: 1 }\n";

    fn error(text: &str) -> String {
        ModelConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_policy_selects_versions_as_triton_does() {
        let available = [7, 1, 3, 2];
        let latest = |n| VersionPolicy::Latest { num_versions: n };
        assert_eq!(latest(1).selected(&available), [7]);
        assert_eq!(latest(2).selected(&available), [3, 7]);
        assert_eq!(latest(9).selected(&available), [1, 2, 3, 7]);
        assert_eq!(VersionPolicy::All.selected(&available), [1, 2, 3, 7]);
        let specific = VersionPolicy::Specific {
            versions: vec![3, 1, 4],
        };
        assert_eq!(specific.selected(&available), [1, 3]);
        assert_eq!(specific.select(&available), Some(3));
        assert_eq!(VersionPolicy::All.select(&[]), None);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let with = |lines: &str| error(&format!("platform: \"onnxruntime_onnx\"\n{lines}\n{IO}"));
        assert!(
            with("max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 16 ] }")
                .contains("preferred_batch_size 16 is not in 1..=8")
        );
        assert!(
            with("dynamic_batching { preferred_batch_size: 0 }").contains("preferred_batch_size 0")
        );
        assert!(
            with("instance_group { count: -2 }").contains("instance_group count -2 is negative")
        );
        assert!(with("instance_group { kind: KIND_MODEL }").contains("KIND_MODEL is not supported"));
        assert!(
            with("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]")
                .contains("different kinds")
        );
        assert!(with("version_policy { latest { } }").contains("num_versions 0"));
        assert!(with("version_policy { specific { versions: [ 2, -1 ] } }")
            .contains("specific lists versions [2, -1]"));
        assert!(with("version_policy { specific { } }").contains("specific lists versions []"));
    }

    #[test]
    fn instance_group_gpus_is_warned() {
        let text = format!("platform: \"tensorrt_plan\" instance_group {{ count: 1 kind: KIND_GPU gpus: [ 0, 1 ] }}\n{IO}");
        let (config, warnings) = ModelConfig::parse(&text).unwrap();
        assert_eq!(config.instance_count, 1);
        assert_eq!(warnings, ["config.pbtxt: instance_group gpus [0, 1] is ignored; gsinfer runs every instance on its one GPU"]);
    }

    #[test]
    fn version_policies_select_the_highest_allowed_version() {
        let available = [1, 3, 10, 2];
        assert_eq!(VersionPolicy::default().select(&available), Some(10));
        assert_eq!(
            VersionPolicy::Latest { num_versions: 3 }.select(&available),
            Some(10)
        );
        assert_eq!(VersionPolicy::All.select(&available), Some(10));
        assert_eq!(
            VersionPolicy::Specific {
                versions: vec![2, 3, 7]
            }
            .select(&available),
            Some(3)
        );
        assert_eq!(
            VersionPolicy::Specific { versions: vec![7] }.select(&available),
            None
        );
        assert_eq!(VersionPolicy::All.select(&[]), None);
    }
}
