//! GPU models for placement: the profile table in the simulator's model files (`sim/models/`,
//! the fixture format NVML probes recorded), and a fingerprint that keys cached policy tables.

use super::PolicyError;
use crate::placement::{Profile, Slot};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    gpus: Vec<Gpu>,
}

#[derive(Deserialize)]
struct Gpu {
    gi_profiles: Vec<RawProfile>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RawProfile {
    profile_index: u32,
    error: Option<String>,
    id: Option<u32>,
    sliceCount: Option<u32>,
    instanceCount: Option<u32>,
    memorySizeMB: Option<u64>,
    multiprocessorCount: Option<u32>,
    name: Option<String>,
    placements: Option<Vec<(u32, u32)>>,
}

/// The supported GPU-instance profiles of a model file, as the allocator's [`Profile`]s.
pub fn profiles_from_json(text: &str) -> Result<Vec<Profile>, PolicyError> {
    let f: File = serde_json::from_str(text).map_err(PolicyError::ModelJson)?;
    let gpu = f.gpus.into_iter().next().ok_or(PolicyError::ModelNoGpu)?;
    let mut out = Vec::new();
    for p in gpu.gi_profiles.into_iter().filter(|p| p.error.is_none()) {
        let missing = |field| PolicyError::ModelField {
            index: p.profile_index,
            field,
        };
        let name = p.name.as_deref().ok_or_else(|| missing("name"))?;
        out.push(Profile {
            name: name.strip_prefix("MIG ").unwrap_or(name).to_string(),
            id: p.id.ok_or_else(|| missing("id"))?,
            index: p.profile_index,
            slice_count: p.sliceCount.ok_or_else(|| missing("sliceCount"))?,
            instance_count: p.instanceCount.ok_or_else(|| missing("instanceCount"))?,
            memory_mb: p.memorySizeMB.unwrap_or(0),
            multiprocessors: p.multiprocessorCount.unwrap_or(0),
            placements: p
                .placements
                .unwrap_or_default()
                .into_iter()
                .map(|(start, size)| Slot { start, size })
                .collect(),
        });
    }
    if out.is_empty() {
        return Err(PolicyError::ModelNoProfile);
    }
    Ok(out)
}

/// What placement depends on in a profile table (names, ids, counts, placements), hashed:
/// GPUs with the same fingerprint share policy tables whatever their marketing name.
pub fn fingerprint(profiles: &[Profile]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in profiles {
        eat(p.name.as_bytes());
        for v in [p.id, p.slice_count, p.instance_count] {
            eat(&v.to_le_bytes());
        }
        for s in &p.placements {
            eat(&s.start.to_le_bytes());
            eat(&s.size.to_le_bytes());
        }
        eat(b";");
    }
    format!("{h:016x}")
}

/// The simulator's models, compiled in for tests.
#[cfg(test)]
pub(crate) fn all_models() -> Vec<(&'static str, Vec<Profile>)> {
    [
        (
            "h100-80gb",
            include_str!("../../../../sim/models/h100-80gb.json"),
        ),
        (
            "h200-141gb",
            include_str!("../../../../sim/models/h200-141gb.json"),
        ),
        (
            "a100-40gb",
            include_str!("../../../../sim/models/a100-40gb.json"),
        ),
        (
            "a100-80gb",
            include_str!("../../../../sim/models/a100-80gb.json"),
        ),
        (
            "b200-180gb",
            include_str!("../../../../sim/models/b200-180gb.json"),
        ),
        (
            "h100-nvl-94gb",
            include_str!("../../../../sim/models/h100-nvl-94gb.json"),
        ),
        (
            "gh200-96gb",
            include_str!("../../../../sim/models/gh200-96gb.json"),
        ),
        (
            "h20-96gb",
            include_str!("../../../../sim/models/h20-96gb.json"),
        ),
    ]
    .into_iter()
    .map(|(k, t)| (k, profiles_from_json(t).expect("model files parse")))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_model_file_equals_the_recorded_table() {
        let models = all_models();
        let h100 = &models[0].1;
        let fixture = crate::placement::tests::h100();
        let pick = |ps: &[Profile]| {
            ps.iter()
                .map(|p| (p.name.clone(), p.id, p.instance_count, p.placements.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(h100), pick(&fixture));
        assert_eq!(fingerprint(h100), fingerprint(&fixture));
        assert_ne!(fingerprint(h100), fingerprint(&models[1].1));
    }

    /// The models built from NVIDIA's tables place as the recorded H100 does: same ids,
    /// counts and placements under other names and memory sizes.
    #[test]
    fn published_models_share_the_recorded_h100_placements() {
        let models = all_models();
        let shape = |ps: &[Profile]| {
            ps.iter()
                .map(|p| (p.id, p.slice_count, p.instance_count, p.placements.clone()))
                .collect::<Vec<_>>()
        };
        let h100 = &models[0].1;
        for (key, ps) in &models[4..] {
            assert_eq!(shape(ps), shape(h100), "{key}");
            assert_ne!(fingerprint(ps), fingerprint(h100), "{key}: its own names");
            assert!(ps.iter().all(|p| p.memory_mb > 0 && p.multiprocessors > 0));
        }
        let names: Vec<&str> = models.iter().map(|m| m.0).collect();
        assert_eq!(
            names[4..],
            ["b200-180gb", "h100-nvl-94gb", "gh200-96gb", "h20-96gb"]
        );
    }

    /// Placement knows every model the simulator has: a model file added to sim/models/
    /// without its line in [`all_models`] would go untested by every property test above.
    #[test]
    fn every_sim_model_file_is_a_placement_model() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/models");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        files.sort();
        let mut known: Vec<String> = all_models().into_iter().map(|m| m.0.to_string()).collect();
        known.sort();
        assert_eq!(files, known);
        for (key, ps) in all_models() {
            assert!(
                ps.iter()
                    .all(|p| !p.placements.is_empty()
                        && p.placements.len() >= p.instance_count as usize),
                "{key}: every profile has its placements"
            );
        }
    }
}
