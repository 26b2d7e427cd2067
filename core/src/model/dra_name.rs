//! The names of the devices a node publishes to Kubernetes' DRA (docs/kubernetes.md): built and
//! read back here only, so the publisher that writes them and the kubelet plugin that prepares
//! what the scheduler allocated by them cannot disagree.
//!
//! A device name must be a DNS label (lowercase letters, digits and `-`, at most 63, starting
//! and ending with a letter or digit); the API server rejects a ResourceSlice with any other.
//!
//! - `gpu<index>-<profile>-at<start>`: a MIG instance of `<profile>` at placement `<start>` on
//!   the GPU of NVML index `<index>`, the profile's `.` and `+` turned into `-`
//!   (`gpu3-2g-20gb-at4`, `gpu0-1g-10gb-me-at0`);
//! - `gpu<index>-whole`: the whole GPU, time-sliced;
//! - `gpu<index>-mps`: MPS shares of the GPU as one device with consumable capacity;
//!   `gpu<index>-mps-<k>`: the k-th of its counted shares, where the cluster has no consumable
//!   capacity.
//!
//! Numbers are written without leading zeros and read back only so, so that one device has one
//! name.

use crate::placement::Profile;
use std::fmt;
use std::str::FromStr;

/// Kubernetes' limit on a DNS label (`validation.IsDNS1123Label`).
pub const MAX_LABEL: usize = 63;

/// A device name gpushare cannot build or does not recognise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraNameError {
    #[error("MIG profile {profile:?} cannot name a DRA device: after turning '.' and '+' into '-' it must be lowercase letters, digits and '-', starting with a digit and ending with a letter or digit")]
    Profile { profile: String },
    #[error("DRA device name {name:?} is longer than Kubernetes' {MAX_LABEL} characters")]
    TooLong { name: String },
    #[error("{name:?} is not a gpushare DRA device name; expected gpu<index>-<profile>-at<start>, gpu<index>-whole, gpu<index>-mps or gpu<index>-mps-<k> (e.g. gpu3-2g-20gb-at4)")]
    Unknown { name: String },
}

/// One published device, by what its name says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceName {
    /// A MIG instance; `profile` is the profile's label ([`profile_label`]), not its NVML name.
    Mig {
        gpu: u32,
        profile: String,
        start: u32,
    },
    /// The whole GPU, time-sliced between the claims that share it.
    Whole { gpu: u32 },
    /// MPS shares of the GPU as one device with consumable capacity.
    Mps { gpu: u32 },
    /// The `share`-th counted MPS share of the GPU.
    MpsShare { gpu: u32, share: u32 },
}

impl DeviceName {
    /// The device of a MIG instance of `profile` (its NVML name, e.g. `1g.10gb+me`) at `start`.
    pub fn mig(gpu: u32, profile: &str, start: u32) -> Result<Self, DraNameError> {
        let name = DeviceName::Mig {
            gpu,
            profile: profile_label(profile)?,
            start,
        };
        // The longest real name is 20 characters; a made-up profile could still overflow.
        let text = name.to_string();
        if text.len() > MAX_LABEL {
            return Err(DraNameError::TooLong { name: text });
        }
        Ok(name)
    }

    /// The NVML index of the GPU the device is on.
    pub fn gpu(&self) -> u32 {
        match self {
            DeviceName::Mig { gpu, .. }
            | DeviceName::Whole { gpu }
            | DeviceName::Mps { gpu }
            | DeviceName::MpsShare { gpu, .. } => *gpu,
        }
    }

    /// For a MIG device, its profile in `profiles` (the GPU's table); labels are unique within
    /// every known table, which the unit tests check.
    pub fn profile<'a>(&self, profiles: &'a [Profile]) -> Option<&'a Profile> {
        let DeviceName::Mig { profile, .. } = self else {
            return None;
        };
        profiles
            .iter()
            .find(|p| profile_label(&p.name).is_ok_and(|l| &l == profile))
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Mig {
                gpu,
                profile,
                start,
            } => write!(f, "gpu{gpu}-{profile}-at{start}"),
            DeviceName::Whole { gpu } => write!(f, "gpu{gpu}-whole"),
            DeviceName::Mps { gpu } => write!(f, "gpu{gpu}-mps"),
            DeviceName::MpsShare { gpu, share } => write!(f, "gpu{gpu}-mps-{share}"),
        }
    }
}

impl FromStr for DeviceName {
    type Err = DraNameError;

    fn from_str(name: &str) -> Result<Self, DraNameError> {
        let unknown = || DraNameError::Unknown {
            name: name.chars().take(2 * MAX_LABEL).collect(),
        };
        if !is_dns_label(name) {
            return Err(unknown());
        }
        let rest = name.strip_prefix("gpu").ok_or_else(unknown)?;
        let (gpu, kind) = rest.split_once('-').ok_or_else(unknown)?;
        let gpu = number(gpu).ok_or_else(unknown)?;
        let parsed = match kind {
            "whole" => DeviceName::Whole { gpu },
            "mps" => DeviceName::Mps { gpu },
            _ => {
                if let Some(share) = kind.strip_prefix("mps-") {
                    let share = number(share).ok_or_else(unknown)?;
                    DeviceName::MpsShare { gpu, share }
                } else {
                    let (profile, start) = kind.rsplit_once("-at").ok_or_else(unknown)?;
                    let start = number(start).ok_or_else(unknown)?;
                    if !is_label(profile) {
                        return Err(unknown());
                    }
                    DeviceName::Mig {
                        gpu,
                        profile: profile.to_string(),
                        start,
                    }
                }
            }
        };
        Ok(parsed)
    }
}

/// A MIG profile's part of a device name: its NVML name (without "MIG ") with `.` and `+`
/// turned into `-` (`1g.10gb+me` -> `1g-10gb-me`).
pub fn profile_label(profile: &str) -> Result<String, DraNameError> {
    let label: String = profile
        .chars()
        .map(|c| if c == '.' || c == '+' { '-' } else { c })
        .collect();
    if is_label(&label) {
        Ok(label)
    } else {
        Err(DraNameError::Profile {
            profile: profile.chars().take(2 * MAX_LABEL).collect(),
        })
    }
}

/// Whether `s` is a DNS label as Kubernetes validates object and device names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A profile label: starts with a digit (every NVML profile does, `<n>g.`), so it can never read
/// as `whole` or `mps`, and holds no empty part.
fn is_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_digit() && !s.contains("--")
}

/// A decimal u32 without sign or leading zeros.
fn number(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::all_models;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<DeviceName, DraNameError> {
        s.parse()
    }

    #[test]
    fn names_read_as_the_shared_contract_writes_them() {
        let n = DeviceName::mig(3, "2g.20gb", 4).unwrap();
        assert_eq!(n.to_string(), "gpu3-2g-20gb-at4");
        let me = DeviceName::mig(0, "1g.10gb+me", 0).unwrap();
        assert_eq!(me.to_string(), "gpu0-1g-10gb-me-at0");
        assert_eq!(DeviceName::Whole { gpu: 7 }.to_string(), "gpu7-whole");
        assert_eq!(DeviceName::Mps { gpu: 1 }.to_string(), "gpu1-mps");
        assert_eq!(
            DeviceName::MpsShare { gpu: 1, share: 12 }.to_string(),
            "gpu1-mps-12"
        );
        for n in [
            n,
            me,
            DeviceName::Whole { gpu: 7 },
            DeviceName::Mps { gpu: 1 },
            DeviceName::MpsShare { gpu: 1, share: 12 },
        ] {
            assert_eq!(parse(&n.to_string()), Ok(n));
        }
    }

    #[test]
    fn every_profile_of_every_sim_model_round_trips_at_every_placement() {
        for (model, profiles) in all_models() {
            let mut labels = std::collections::BTreeSet::new();
            for p in &profiles {
                let label = profile_label(&p.name).unwrap();
                assert!(labels.insert(label.clone()), "{model}: label {label} twice");
                for slot in &p.placements {
                    for gpu in [0, 7, 15] {
                        let n = DeviceName::mig(gpu, &p.name, slot.start).unwrap();
                        let text = n.to_string();
                        assert!(is_dns_label(&text), "{model}: {text}");
                        let back = parse(&text).unwrap();
                        assert_eq!(back, n, "{model}: {text}");
                        assert_eq!(back.gpu(), gpu);
                        assert_eq!(back.profile(&profiles), Some(p), "{model}: {text}");
                    }
                }
            }
        }
    }

    #[test]
    fn names_that_are_not_ours_or_not_canonical_are_refused() {
        for bad in [
            "",
            "gpu",
            "gpu0",
            "gpu-whole",
            "gpu00-whole",
            "gpu01-whole",
            "gpu0-mps-",
            "gpu0-mps-01",
            "gpu0-mps-x",
            "gpu0-2g-20gb-at",
            "gpu0-2g-20gb-at04",
            "gpu0-2g--20gb-at4",
            "gpu0-at4",
            "gpu0-g-20gb-at4",
            "gpu0-2g.20gb-at4",
            "GPU0-whole",
            "gpu0-Whole",
            "gpu0-whole-",
            "gpu4294967296-whole",
            "mig-gpu0-2g-20gb-at4",
            "gpu-0-mig-1g.10gb-19-0",
        ] {
            assert!(
                matches!(parse(bad), Err(DraNameError::Unknown { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse("gpu4294967295-whole"),
            Ok(DeviceName::Whole { gpu: u32::MAX })
        );
    }

    #[test]
    fn profiles_that_cannot_make_a_dns_label_are_refused_when_building() {
        for bad in [
            "", "2G.20GB", "2g..20gb", "2g_20gb", ".2g", "2g.", "mps", "whole",
        ] {
            assert!(
                matches!(
                    DeviceName::mig(0, bad, 0),
                    Err(DraNameError::Profile { .. })
                ),
                "{bad:?}"
            );
        }
        let long = format!("1g.{}", "9".repeat(60));
        assert!(matches!(
            DeviceName::mig(0, &long, 0),
            Err(DraNameError::TooLong { .. })
        ));
    }

    #[test]
    fn the_dns_label_rule_is_kubernetes_one() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("0"));
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "é"] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    proptest! {
        /// Every name built from any label-shaped profile reads back as itself and is a DNS
        /// label; every string that parses is printed back unchanged (one name per device).
        #[test]
        fn built_names_round_trip(
            gpu in any::<u32>(),
            start in any::<u32>(),
            share in any::<u32>(),
            profile in "[1-9]g\\.[0-9]{1,3}gb(\\+(me|gfx))?",
        ) {
            let n = DeviceName::mig(gpu, &profile, start).unwrap();
            prop_assert!(is_dns_label(&n.to_string()));
            prop_assert_eq!(parse(&n.to_string()), Ok(n));
            for n in [
                DeviceName::Whole { gpu },
                DeviceName::Mps { gpu },
                DeviceName::MpsShare { gpu, share },
            ] {
                prop_assert_eq!(parse(&n.to_string()), Ok(n));
            }
        }

        #[test]
        fn parsed_names_print_back_unchanged(s in "gpu[0-9]{1,3}-([0-9a-z-]{0,12}|mps(-[0-9]{1,3})?|whole)(-at[0-9]{1,2})?") {
            if let Ok(n) = parse(&s) {
                prop_assert_eq!(n.to_string(), s);
            }
        }
    }
}
