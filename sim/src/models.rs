//! GPU models as data: the JSON files under `sim/models/`, in the format of the probes recorded
//! in `shared/fixtures/` (one entry per GPU-instance profile *index*, either NVML's answer or the
//! error it gave).

use serde::Deserialize;
use std::sync::OnceLock;

/// `(model name, JSON text)` of every built-in model.
const MODEL_FILES: &[(&str, &str)] = &[
    ("h100-80gb", include_str!("../models/h100-80gb.json")),
    ("h200-141gb", include_str!("../models/h200-141gb.json")),
    ("a100-40gb", include_str!("../models/a100-40gb.json")),
    ("a100-80gb", include_str!("../models/a100-80gb.json")),
    ("b200-180gb", include_str!("../models/b200-180gb.json")),
    (
        "h100-nvl-94gb",
        include_str!("../models/h100-nvl-94gb.json"),
    ),
    ("gh200-96gb", include_str!("../models/gh200-96gb.json")),
    ("h20-96gb", include_str!("../models/h20-96gb.json")),
];

/// Compute modes of the recorded models, whose files are the probes exactly as recorded (no
/// field for it): both GPUs answered NVML_COMPUTEMODE_DEFAULT (shared/fixtures/README.md).
const RECORDED_COMPUTE_MODE: &[(&str, u32)] = &[("h100-80gb", 0), ("h200-141gb", 0)];

/// How a MIG mode change (`nvmlDeviceSetMigMode`) takes effect on a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigModeChange {
    /// At once: "Starting with the Hopper generation of GPUs, enabling MIG mode no longer
    /// requires a GPU reset to take effect" (MIG User Guide, "GPU Reset on Hopper+ GPUs").
    /// What a model file without the field gets, the recorded H100 and H200 included.
    #[default]
    Immediate,
    /// Pending until the GPU is reset: on Ampere the driver must reset the GPU, and where it
    /// cannot, nvidia-smi reports the mode "in pending enable state" (MIG User Guide, "GPU Reset
    /// on NVIDIA Ampere Architecture GPUs").
    Reset,
}

/// Number of memory slots a GPU instance placement is expressed in.
pub const MEMORY_SLOTS: u32 = 8;

/// One GPU-instance profile the model supports (NVML's `nvmlGpuInstanceProfileInfo_v2_t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiProfile {
    pub index: u32,
    pub id: u32,
    pub is_p2p_supported: u32,
    pub slice_count: u32,
    pub instance_count: u32,
    pub multiprocessor_count: u32,
    pub copy_engine_count: u32,
    pub decoder_count: u32,
    pub encoder_count: u32,
    pub jpeg_count: u32,
    pub ofa_count: u32,
    pub memory_size_mb: u64,
    /// As NVML names it, e.g. "MIG 1g.10gb".
    pub name: String,
    /// `(start, size)` in memory slots, in NVML's order.
    pub placements: Vec<(u32, u32)>,
    /// `nvmlDeviceGetGpuInstanceRemainingCapacity` on an empty GPU, as recorded.
    pub remaining_empty: u32,
}

impl GiProfile {
    /// The profile name without NVML's "MIG " prefix, e.g. "1g.10gb".
    pub fn short_name(&self) -> &str {
        self.name.strip_prefix("MIG ").unwrap_or(&self.name)
    }
}

/// What NVML answers for one profile index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSlot {
    Supported(GiProfile),
    NotSupported,
    InvalidArgument,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Our key, e.g. "h100-80gb".
    pub key: String,
    pub driver: String,
    pub nvml: String,
    /// As `nvmlDeviceGetName` answers, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    pub memory_total: u64,
    /// Indexed by NVML profile index.
    pub profiles: Vec<ProfileSlot>,
    /// The compute mode a GPU of this model starts in (`nvmlComputeMode_t`, what NVML answered
    /// where it was recorded); None where the model has no compute modes: the getter and the
    /// setter then answer NOT_SUPPORTED.
    pub compute_mode: Option<u32>,
    pub mig_mode_change: MigModeChange,
}

impl Model {
    /// Supported GPU-instance profiles, in profile-index order.
    pub fn gi_profiles(&self) -> impl Iterator<Item = &GiProfile> {
        self.profiles.iter().filter_map(|p| match p {
            ProfileSlot::Supported(g) => Some(g),
            _ => None,
        })
    }

    pub fn gi_profile_by_id(&self, id: u32) -> Option<&GiProfile> {
        self.gi_profiles().find(|p| p.id == id)
    }

    /// By name, with or without the "MIG " prefix ("1g.10gb" or "MIG 1g.10gb").
    pub fn gi_profile_by_name(&self, name: &str) -> Option<&GiProfile> {
        let short = name.strip_prefix("MIG ").unwrap_or(name);
        self.gi_profiles().find(|p| p.short_name() == short)
    }

    /// SMs of one compute slice: those of the 1-slice profile (index 0).
    pub fn sms_per_slice(&self) -> u32 {
        self.gi_profiles()
            .find(|p| p.slice_count == 1)
            .map(|p| p.multiprocessor_count)
            .unwrap_or(0)
    }

    /// The number of compute slices of the whole GPU (the largest profile's slice count).
    pub fn compute_slices(&self) -> u32 {
        self.gi_profiles().map(|p| p.slice_count).max().unwrap_or(0)
    }
}

#[derive(Deserialize)]
struct RawFile {
    driver: String,
    nvml: String,
    gpus: Vec<RawGpu>,
}

#[derive(Deserialize)]
struct RawGpu {
    name: String,
    memory_total: u64,
    gi_profiles: Vec<RawProfile>,
    #[serde(default)]
    compute_mode: Option<u32>,
    #[serde(default)]
    mig_mode_change: MigModeChange,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RawProfile {
    profile_index: u32,
    error: Option<String>,
    id: Option<u32>,
    isP2pSupported: Option<u32>,
    sliceCount: Option<u32>,
    instanceCount: Option<u32>,
    multiprocessorCount: Option<u32>,
    copyEngineCount: Option<u32>,
    decoderCount: Option<u32>,
    encoderCount: Option<u32>,
    jpegCount: Option<u32>,
    ofaCount: Option<u32>,
    memorySizeMB: Option<u64>,
    name: Option<String>,
    placements: Option<Vec<(u32, u32)>>,
    remaining: Option<u32>,
}

/// Parses a model file (the fixture format).
pub fn parse_model(key: &str, text: &str) -> Result<Model, String> {
    let raw: RawFile = serde_json::from_str(text).map_err(|e| format!("model {key}: {e}"))?;
    let gpu = raw
        .gpus
        .into_iter()
        .next()
        .ok_or_else(|| format!("model {key}: no GPU"))?;
    let mut profiles = Vec::new();
    for (i, p) in gpu.gi_profiles.into_iter().enumerate() {
        if p.profile_index as usize != i {
            return Err(format!("model {key}: profile indexes out of order at {i}"));
        }
        let slot = match p.error.as_deref() {
            Some("Not Supported") => ProfileSlot::NotSupported,
            Some("Invalid Argument") => ProfileSlot::InvalidArgument,
            Some(other) => return Err(format!("model {key}: unknown error {other:?}")),
            None => {
                let need = |v: Option<u32>, f: &str| {
                    v.ok_or_else(|| format!("model {key}: profile {i} lacks {f}"))
                };
                ProfileSlot::Supported(GiProfile {
                    index: p.profile_index,
                    id: need(p.id, "id")?,
                    is_p2p_supported: p.isP2pSupported.unwrap_or(0),
                    slice_count: need(p.sliceCount, "sliceCount")?,
                    instance_count: need(p.instanceCount, "instanceCount")?,
                    multiprocessor_count: need(p.multiprocessorCount, "multiprocessorCount")?,
                    copy_engine_count: need(p.copyEngineCount, "copyEngineCount")?,
                    decoder_count: need(p.decoderCount, "decoderCount")?,
                    encoder_count: need(p.encoderCount, "encoderCount")?,
                    jpeg_count: need(p.jpegCount, "jpegCount")?,
                    ofa_count: need(p.ofaCount, "ofaCount")?,
                    memory_size_mb: p
                        .memorySizeMB
                        .ok_or_else(|| format!("model {key}: profile {i} lacks memorySizeMB"))?,
                    name: p
                        .name
                        .ok_or_else(|| format!("model {key}: profile {i} lacks name"))?,
                    placements: p.placements.unwrap_or_default(),
                    remaining_empty: need(p.remaining, "remaining")?,
                })
            }
        };
        profiles.push(slot);
    }
    Ok(Model {
        key: key.to_string(),
        driver: raw.driver,
        nvml: raw.nvml,
        name: gpu.name,
        memory_total: gpu.memory_total,
        profiles,
        compute_mode: gpu.compute_mode.or_else(|| {
            RECORDED_COMPUTE_MODE
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, m)| *m)
        }),
        mig_mode_change: gpu.mig_mode_change,
    })
}

fn all() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        MODEL_FILES
            .iter()
            // The files are compiled in and checked by tests; a broken one is left out.
            .filter_map(|(k, t)| parse_model(k, t).ok())
            .collect()
    })
}

/// The built-in model of that key.
pub fn model(key: &str) -> Option<&'static Model> {
    all().iter().find(|m| m.key == key)
}

/// Keys of all built-in models.
pub fn model_keys() -> Vec<&'static str> {
    MODEL_FILES.iter().map(|(k, _)| *k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn all_models_parse() {
        for (k, t) in MODEL_FILES {
            let m = parse_model(k, t).unwrap();
            assert_eq!(m.profiles.len(), 18, "{k}");
            assert_eq!(m.compute_slices(), 7, "{k}");
            for p in m.gi_profiles() {
                assert!(!p.placements.is_empty(), "{k} {}", p.name);
                for &(s, z) in &p.placements {
                    assert!(s + z <= MEMORY_SLOTS);
                    assert_eq!(s % z, 0, "{k} {}: placements are aligned", p.name);
                }
            }
        }
        assert_eq!(model_keys().len(), all().len());
    }

    #[test]
    fn compute_mode_comes_from_the_model_data() {
        for (k, _) in MODEL_FILES {
            assert_eq!(
                model(k).unwrap().compute_mode,
                Some(0),
                "{k} starts in Default"
            );
        }
        // A model file without the field has no compute modes (NOT_SUPPORTED).
        let (_, text) = MODEL_FILES.iter().find(|(k, _)| *k == "a100-40gb").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["gpus"][0].as_object_mut().unwrap().remove("compute_mode");
        let m = parse_model("other", &v.to_string()).unwrap();
        assert_eq!(m.compute_mode, None);
    }

    /// The models built from NVIDIA's tables rather than recorded: every profile says where
    /// its numbers come from, and the geometry is the recorded H100's.
    #[test]
    fn published_models_carry_sources_and_the_recorded_geometry() {
        let shape = |m: &Model| {
            m.profiles
                .iter()
                .map(|p| match p {
                    ProfileSlot::Supported(g) => Some((
                        g.index,
                        g.id,
                        g.slice_count,
                        g.instance_count,
                        g.placements.clone(),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let h100 = model("h100-80gb").unwrap();
        for (key, name, first) in [
            ("b200-180gb", "NVIDIA B200", "1g.23gb"),
            ("h100-nvl-94gb", "NVIDIA H100 NVL", "1g.12gb"),
            ("gh200-96gb", "NVIDIA GH200 480GB", "1g.12gb"),
            ("h20-96gb", "NVIDIA H20", "1g.12gb"),
        ] {
            let m = model(key).unwrap_or_else(|| panic!("{key} is built in"));
            assert_eq!(m.name, name);
            assert_eq!(shape(m), shape(h100), "{key}: the GH100 layout");
            assert_eq!(m.gi_profiles().next().unwrap().short_name(), first);
            assert_eq!(m.mig_mode_change, MigModeChange::Immediate, "{key}");
            let text = MODEL_FILES.iter().find(|(k, _)| *k == key).unwrap().1;
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(v["source"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.nvidia.com/"));
            for p in v["gpus"][0]["gi_profiles"].as_array().unwrap() {
                if p.get("error").is_none() {
                    let src = p["source"].as_str().unwrap_or_default();
                    assert!(src.len() > 40, "{key} {}: no source", p["name"]);
                }
            }
            // Memory grows with the slice count, and the whole GPU holds its largest profile.
            let mem = |n: &str| m.gi_profile_by_name(n).unwrap().memory_size_mb;
            let full = m.gi_profiles().max_by_key(|p| p.slice_count).unwrap();
            assert!(full.memory_size_mb << 20 <= m.memory_total, "{key}");
            assert!(mem(first) < full.memory_size_mb);
        }
    }

    #[test]
    fn only_ampere_needs_a_reset_for_a_mig_mode_change() {
        for key in model_keys() {
            let want = if key.starts_with("a100") {
                MigModeChange::Reset
            } else {
                MigModeChange::Immediate
            };
            assert_eq!(model(key).unwrap().mig_mode_change, want, "{key}");
        }
    }

    fn fixture_matches(key: &str, fixture: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures")
            .join(fixture);
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!(
                "note: {} absent; skipping the fixture comparison",
                path.display()
            );
            return;
        };
        let want: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ours = MODEL_FILES.iter().find(|(k, _)| *k == key).unwrap().1;
        let have: serde_json::Value = serde_json::from_str(ours).unwrap();
        assert_eq!(have, want, "sim/models/{key}.json differs from {fixture}");
        // And the parsed model carries the fixture's numbers.
        let m = model(key).unwrap();
        assert_eq!(m.name, want["gpus"][0]["name"]);
        assert_eq!(
            m.memory_total,
            want["gpus"][0]["memory_total"].as_u64().unwrap()
        );
        for (i, p) in want["gpus"][0]["gi_profiles"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            match &m.profiles[i] {
                ProfileSlot::Supported(g) => {
                    assert_eq!(g.id as u64, p["id"].as_u64().unwrap());
                    assert_eq!(g.name, p["name"].as_str().unwrap());
                    assert_eq!(g.memory_size_mb, p["memorySizeMB"].as_u64().unwrap());
                }
                ProfileSlot::NotSupported => assert_eq!(p["error"], "Not Supported"),
                ProfileSlot::InvalidArgument => assert_eq!(p["error"], "Invalid Argument"),
            }
        }
    }

    #[test]
    fn h100_equals_fixture() {
        fixture_matches("h100-80gb", "h100-80gb-hbm3.nvml.json");
    }

    #[test]
    fn h200_equals_fixture() {
        fixture_matches("h200-141gb", "h200-141gb.nvml.json");
    }
}
