//! Where a new MIG GPU instance goes. Busy instances never move, so each placement decides
//! what still fits later: the best-fit rule picks the free placement that leaves the GPU able
//! to create the most instances of every profile afterwards (ties: lowest start).

use serde::{Deserialize, Serialize};

/// Memory slots [start, start + size) of the GPU's 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub start: u32,
    pub size: u32,
}

impl Slot {
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.start < other.start + other.size && other.start < self.start + self.size
    }
}

/// A GPU-instance profile as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Name without NVML's "MIG " prefix, e.g. "2g.20gb".
    pub name: String,
    /// NVML's profile id (used by placement, capacity and create calls).
    pub id: u32,
    /// NVML's profile index (used by the profile-info call).
    pub index: u32,
    pub slice_count: u32,
    pub instance_count: u32,
    pub memory_mb: u64,
    pub multiprocessors: u32,
    pub placements: Vec<Slot>,
}

/// A GPU instance that exists on the GPU, whoever made it.
/// A GPU instance and its compute instances, as NVML lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub slot: Slot,
    pub compute_instances: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupied {
    pub profile_id: u32,
    pub slot: Slot,
}

/// Placements of `p` free now, given what exists (none once its instance count is reached).
pub fn free_placements(p: &Profile, occupied: &[Occupied]) -> Vec<Slot> {
    let existing = occupied.iter().filter(|o| o.profile_id == p.id).count() as u32;
    if existing >= p.instance_count {
        return Vec::new();
    }
    p.placements
        .iter()
        .copied()
        .filter(|s| !occupied.iter().any(|o| o.slot.overlaps(s)))
        .collect()
}

/// How many more instances of `p` could be created: the most mutually disjoint free
/// placements (earliest end first is optimal for intervals), capped by the instance count.
pub fn capacity(p: &Profile, occupied: &[Occupied]) -> u32 {
    let existing = occupied.iter().filter(|o| o.profile_id == p.id).count() as u32;
    let mut free = free_placements(p, occupied);
    free.sort_by_key(|s| (s.start + s.size, s.start));
    let mut taken: Vec<Slot> = Vec::new();
    for s in free {
        if !taken.iter().any(|t| t.overlaps(&s)) {
            taken.push(s);
        }
    }
    (taken.len() as u32).min(p.instance_count.saturating_sub(existing))
}

/// The best free placement for `target`, or None when none is free. The reference the policy's
/// `bestfit` scorer is tested against; nothing else calls it.
#[cfg(test)]
pub fn best_fit(target: &Profile, profiles: &[Profile], occupied: &[Occupied]) -> Option<Slot> {
    let mut after: Vec<Occupied> = occupied.to_vec();
    let mut best: Option<(u32, Slot)> = None;
    for slot in free_placements(target, occupied) {
        after.push(Occupied {
            profile_id: target.id,
            slot,
        });
        let room: u32 = profiles.iter().map(|p| capacity(p, &after)).sum();
        after.pop();
        if best.is_none_or(|(r, s)| room > r || (room == r && slot.start < s.start)) {
            best = Some((room, slot));
        }
    }
    best.map(|(_, s)| s)
}

/// Everything that could still be created, summed over profiles: the quantity best-fit keeps
/// as large as possible.
pub fn room(profiles: &[Profile], occupied: &[Occupied]) -> u32 {
    profiles.iter().map(|p| capacity(p, occupied)).sum()
}

/// Instances of `p` that exist now.
pub fn count_of(p: &Profile, occupied: &[Occupied]) -> u32 {
    occupied.iter().filter(|o| o.profile_id == p.id).count() as u32
}

/// Whether `slot` may be created for `p` now: one of its placements, free, under the count.
pub fn can_create(p: &Profile, occupied: &[Occupied], slot: Slot) -> bool {
    p.placements.contains(&slot)
        && count_of(p, occupied) < p.instance_count
        && !occupied.iter().any(|o| o.slot.overlaps(&slot))
}

/// The order in which NVIDIA's driver fills starts when asked for no placement, as public
/// `nvidia-smi` transcripts show it (1g: 6,4,5,0,1,2,3; 2g: 4,0,2; 3g: 4,0). One ranking of
/// starts reproduces every transcript, so it also orders profiles no transcript shows.
const DRIVER_START_RANK: [u32; 8] = [6, 4, 5, 0, 1, 2, 3, 7];

/// The driver's rank of a start (lower goes first); unknown starts go last, lowest first.
pub fn driver_rank(start: u32) -> u32 {
    DRIVER_START_RANK
        .iter()
        .position(|&s| s == start)
        .map_or(100 + start, |i| i as u32)
}

/// The free placement NVIDIA's driver would pick with no placement given: the reference the
/// `driver-order` rule is tested against.
#[cfg(test)]
pub fn driver_order(target: &Profile, occupied: &[Occupied]) -> Option<Slot> {
    free_placements(target, occupied)
        .into_iter()
        .min_by_key(|s| (driver_rank(s.start), s.start))
}

/// The free placement with the lowest start.
pub fn lowest(target: &Profile, occupied: &[Occupied]) -> Option<Slot> {
    free_placements(target, occupied)
        .into_iter()
        .min_by_key(|s| s.start)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The H100's profile table (ids, slices, placements) as recorded in the fixtures.
    pub(crate) fn h100() -> Vec<Profile> {
        let p = |name: &str, id, index, slices, count, placements: &[(u32, u32)]| Profile {
            name: name.into(),
            id,
            index,
            slice_count: slices,
            instance_count: count,
            memory_mb: 0,
            multiprocessors: 0,
            placements: placements
                .iter()
                .map(|&(start, size)| Slot { start, size })
                .collect(),
        };
        vec![
            p(
                "1g.10gb",
                19,
                0,
                1,
                7,
                &[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
            ),
            p("2g.20gb", 14, 1, 2, 3, &[(0, 2), (2, 2), (4, 2)]),
            p("3g.40gb", 9, 2, 3, 2, &[(0, 4), (4, 4)]),
            p("4g.40gb", 5, 3, 4, 1, &[(0, 4)]),
            p("7g.80gb", 0, 4, 7, 1, &[(0, 8)]),
            p(
                "1g.10gb+me",
                20,
                7,
                1,
                1,
                &[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
            ),
            p("1g.20gb", 15, 9, 1, 4, &[(0, 2), (2, 2), (4, 2), (6, 2)]),
        ]
    }

    #[test]
    fn empty_gpu_capacity_matches_nvml() {
        let ps = h100();
        let caps: Vec<u32> = ps.iter().map(|p| capacity(p, &[])).collect();
        assert_eq!(caps, [7, 3, 2, 1, 1, 1, 4]);
    }

    #[test]
    fn first_1g_goes_where_it_blocks_least() {
        let ps = h100();
        assert_eq!(best_fit(&ps[0], &ps, &[]), Some(Slot { start: 6, size: 1 }));
    }

    #[test]
    fn seven_1g_fill_the_gpu_and_never_overlap() {
        let ps = h100();
        let mut occ = Vec::new();
        while let Some(slot) = best_fit(&ps[0], &ps, &occ) {
            assert!(!occ.iter().any(|o: &Occupied| o.slot.overlaps(&slot)));
            occ.push(Occupied {
                profile_id: 19,
                slot,
            });
        }
        assert_eq!(occ.len(), 7);
        assert!(ps.iter().all(|p| capacity(p, &occ) == 0));
    }

    #[test]
    fn driver_order_matches_transcripts() {
        let ps = h100();
        let fill = |p: &Profile| {
            let mut occ = Vec::new();
            while let Some(slot) = driver_order(p, &occ) {
                occ.push(Occupied {
                    profile_id: p.id,
                    slot,
                });
            }
            occ.iter().map(|o| o.slot.start).collect::<Vec<_>>()
        };
        assert_eq!(fill(&ps[0]), [6, 4, 5, 0, 1, 2, 3]);
        assert_eq!(fill(&ps[1]), [4, 0, 2]);
        assert_eq!(fill(&ps[2]), [4, 0]);
    }

    #[test]
    fn instance_count_is_respected() {
        let ps = h100();
        let me = &ps[5];
        let occ = [Occupied {
            profile_id: me.id,
            slot: Slot { start: 0, size: 1 },
        }];
        assert!(free_placements(me, &occ).is_empty());
    }
}
