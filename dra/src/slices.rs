//! The node's ResourceSlices and gpushare's DeviceClasses as resource.k8s.io/v1 objects
//! (docs/kubernetes.md): what core's `dra_devices` decided, in the shape the cluster's API
//! server accepts.
//!
//! One pool per node, named after the node. MIG GPUs get a counter set each, a counter of value
//! 1 per memory slice, and every MIG device consumes the counters of its placement's slices:
//! the scheduler never allocates two devices that share a slice. GPUs outside MIG whose whole
//! GPU and MPS shares are counted devices get a counter set each too, one counter of value N
//! (the GPU's MPS shares), of which the whole GPU consumes N and each share 1: the scheduler
//! never allocates the whole GPU beside a share ([`SharingCounter`]). Two shapes:
//!
//! - 1.35 and later: counter sets in slices of their own (at most 8 sets each), devices in
//!   others; a device may consume counters of any slice of the pool.
//! - 1.34: counter sets in the slice of the devices that consume them, at most 32 counters per
//!   slice, so GPUs go in groups (4 H100s a slice); the preference order holds inside a group.
//!
//! The allocator walks slices by name and devices as listed, taking the first that fits, so
//! slices are named `<node>-gpushare-<nnnn>` in preference order and devices keep core's order.

use gpushare_core::dra_devices::{Kind, Offer, Published, SharingCounter};
use gpushare_core::ledger::GpuRecord;
use gpushare_core::placement::{Profile, Slot};
use k8s_openapi::api::resource::v1::{
    CELDeviceSelector, CapacityRequestPolicy, CapacityRequestPolicyRange, Counter, CounterSet,
    Device, DeviceAttribute, DeviceCapacity, DeviceClass, DeviceClassSpec,
    DeviceCounterConsumption, DeviceSelector, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The DRA driver name (team contract; also the attribute and capacity domain): the crate's
/// one definition, which the kubelet plugin registers under.
pub use crate::DRIVER;

/// Labels every slice gpushare publishes, so that its own are found again (and only those).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "gpushare-dra");

/// What the API server takes: devices and counter sets together (1.34) or apart (1.35+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    V1_34,
    V1_35,
}

/// The API server's limits on one slice (resource.k8s.io/v1 validation).
const MAX_DEVICES_WITH_COUNTERS: usize = 64;
const MAX_DEVICES: usize = 128;
/// 1.34: counters of all sets in one slice.
const MAX_COUNTERS_1_34: u32 = 32;
/// 1.35: counter sets in one slice.
const MAX_COUNTER_SETS_1_35: usize = 8;

/// A publication gpushare cannot shape into valid slices.
#[derive(Debug, thiserror::Error)]
pub enum SlicesError {
    #[error("node name {node:?} cannot name a DRA pool and its ResourceSlices: it must be a lowercase DNS subdomain of at most 230 characters (Kubernetes node names are)")]
    NodeName { node: String },
    #[error("GPU {gpu} has {slices} memory slices; a 1.34 ResourceSlice holds at most {MAX_COUNTERS_1_34} counters: publish the 1.35 shape (--kubernetes-version 1.35) on this node")]
    TooManySlices { gpu: u32, slices: u32 },
    #[error("GPU {gpu} publishes {devices} devices tied by its sharing counter; a 1.34 ResourceSlice holds at most {MAX_DEVICES_WITH_COUNTERS} devices that consume counters: lower --mps-shares or publish the 1.35 shape (--kubernetes-version 1.35) on this node")]
    TooManyShares { gpu: u32, devices: usize },
}

/// Which slices a publication makes, in the order the allocator walks them.
pub fn resource_slices(
    node: &str,
    devices: &[Published],
    shape: Shape,
    generation: i64,
) -> Result<Vec<ResourceSlice>, SlicesError> {
    // Leaves room for "-gpushare-nnnn" within a DNS subdomain's 253.
    let valid = node.len() <= 230
        && node.split('.').all(gpushare_core::dra_name::is_dns_label)
        && !node.is_empty();
    if !valid {
        return Err(SlicesError::NodeName {
            node: node.chars().take(260).collect(),
        });
    }
    let mut mig_gpus: Vec<&GpuRecord> = Vec::new();
    for d in devices {
        if matches!(d.kind, Kind::Mig { .. }) && !mig_gpus.iter().any(|g| g.uuid == d.gpu.uuid) {
            mig_gpus.push(&d.gpu);
        }
    }
    mig_gpus.sort_by_key(|g| g.index);
    // GPUs outside MIG whose devices a sharing counter ties, with the counter's value.
    let mut tied: Vec<(u32, u32)> = Vec::new();
    for d in devices {
        if let Some(c) = d.sharing_counter {
            if !tied.iter().any(|&(g, _)| g == d.gpu.index) {
                tied.push((d.gpu.index, c.shares));
            }
        }
    }
    tied.sort_by_key(|&(g, _)| g);
    let mut specs: Vec<(Vec<CounterSet>, Vec<Device>)> = Vec::new();
    match shape {
        Shape::V1_35 => {
            let sets: Vec<CounterSet> = mig_gpus
                .iter()
                .map(|g| counter_set(g))
                .chain(tied.iter().map(|&(g, n)| sharing_counter_set(g, n)))
                .collect();
            for chunk in sets.chunks(MAX_COUNTER_SETS_1_35) {
                specs.push((chunk.to_vec(), Vec::new()));
            }
            let mut current: Vec<Device> = Vec::new();
            for d in devices {
                let dev = device(d);
                let limit = limit_with(&current, &dev);
                if current.len() >= limit {
                    specs.push((Vec::new(), std::mem::take(&mut current)));
                }
                current.push(dev);
            }
            if !current.is_empty() {
                specs.push((Vec::new(), current));
            }
        }
        Shape::V1_34 => {
            // Groups of whole GPUs: a device's counter set must be in its slice.
            let mut groups: Vec<Vec<&GpuRecord>> = Vec::new();
            let (mut counters, mut devs) = (0, 0);
            for g in &mig_gpus {
                let n = slices_of(g);
                if n > MAX_COUNTERS_1_34 {
                    return Err(SlicesError::TooManySlices {
                        gpu: g.index,
                        slices: n,
                    });
                }
                let m = devices.iter().filter(|d| d.gpu.uuid == g.uuid).count();
                let fits =
                    counters + n <= MAX_COUNTERS_1_34 && devs + m <= MAX_DEVICES_WITH_COUNTERS;
                match groups.last_mut() {
                    Some(last) if fits => {
                        last.push(g);
                        counters += n;
                        devs += m;
                    }
                    _ => {
                        groups.push(vec![g]);
                        (counters, devs) = (n, m);
                    }
                }
            }
            for group in &groups {
                let sets = group.iter().map(|g| counter_set(g)).collect();
                let devs = devices
                    .iter()
                    .filter(|d| {
                        matches!(d.kind, Kind::Mig { .. })
                            && group.iter().any(|g| g.uuid == d.gpu.uuid)
                    })
                    .map(device)
                    .collect();
                specs.push((sets, devs));
            }
            // GPUs outside MIG: those a sharing counter ties in groups with their sets (one
            // counter each), as MIG GPUs; the rest without counters.
            let of_gpu = |g: u32| {
                devices.iter().filter(move |d| {
                    !matches!(d.kind, Kind::Mig { .. })
                        && d.gpu.index == g
                        && d.sharing_counter.is_some()
                })
            };
            let mut groups: Vec<Vec<(u32, u32)>> = Vec::new();
            let mut devs = 0;
            for &(g, n) in &tied {
                let m = of_gpu(g).count();
                if m > MAX_DEVICES_WITH_COUNTERS {
                    return Err(SlicesError::TooManyShares { gpu: g, devices: m });
                }
                match groups.last_mut() {
                    Some(last)
                        if last.len() < MAX_COUNTERS_1_34 as usize
                            && devs + m <= MAX_DEVICES_WITH_COUNTERS =>
                    {
                        last.push((g, n));
                        devs += m;
                    }
                    _ => {
                        groups.push(vec![(g, n)]);
                        devs = m;
                    }
                }
            }
            for group in &groups {
                let sets = group
                    .iter()
                    .map(|&(g, n)| sharing_counter_set(g, n))
                    .collect();
                let devs = group.iter().flat_map(|&(g, _)| of_gpu(g)).map(device);
                specs.push((sets, devs.collect()));
            }
            let others: Vec<Device> = devices
                .iter()
                .filter(|d| !matches!(d.kind, Kind::Mig { .. }) && d.sharing_counter.is_none())
                .map(device)
                .collect();
            for chunk in others.chunks(MAX_DEVICES) {
                specs.push((Vec::new(), chunk.to_vec()));
            }
        }
    }
    // A node with nothing to offer still publishes its pool, empty: the new generation is what
    // retires the slices it published before.
    if specs.is_empty() {
        specs.push((Vec::new(), Vec::new()));
    }
    let count = specs.len() as i64;
    Ok(specs
        .into_iter()
        .enumerate()
        .map(|(k, (sets, devs))| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(format!("{node}-gpushare-{k:04}")),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_string(),
                    MANAGED_BY.1.to_string(),
                )])),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: DRIVER.to_string(),
                node_name: Some(node.to_string()),
                pool: ResourcePool {
                    name: node.to_string(),
                    generation,
                    resource_slice_count: count,
                },
                shared_counters: (!sets.is_empty()).then_some(sets),
                devices: (!devs.is_empty()).then_some(devs),
                ..Default::default()
            },
        })
        .collect())
}

/// How many devices the slice `current` may hold once `next` joins it.
fn limit_with(current: &[Device], next: &Device) -> usize {
    let counts = |d: &Device| d.consumes_counters.is_some();
    if counts(next) || current.iter().any(counts) {
        MAX_DEVICES_WITH_COUNTERS
    } else {
        MAX_DEVICES
    }
}

/// Memory slices of a GPU (8 on every MIG GPU so far).
fn slices_of(g: &GpuRecord) -> u32 {
    gpushare_core::dra_devices::memory_slices(&g.profiles)
}

/// What ends the name of a MIG GPU's counter set (its memory slices).
const MEMORY_SLICES_SET: &str = "-memory-slices";

/// The name of a GPU's counter set.
pub fn counter_set_name(gpu_index: u32) -> String {
    format!("gpu{gpu_index}{MEMORY_SLICES_SET}")
}

/// The name of a memory slice's counter.
pub fn counter_name(slice: u32) -> String {
    format!("memory-slice-{slice}")
}

fn counter_set(g: &GpuRecord) -> CounterSet {
    CounterSet {
        name: counter_set_name(g.index),
        counters: (0..slices_of(g))
            .map(|s| (counter_name(s), count(1)))
            .collect(),
    }
}

/// The name of the counter set that ties the whole-GPU device of a GPU outside MIG to its MPS
/// shares.
pub fn sharing_set_name(gpu_index: u32) -> String {
    format!("gpu{gpu_index}-sharing")
}

/// The one counter of a sharing set: the GPU's MPS shares.
pub const SHARES_COUNTER: &str = "shares";

/// Whether a counter set is a MIG GPU's memory slices (the counters without which the
/// scheduler could allocate overlapping placements), not a sharing set.
pub fn is_memory_slices_set(name: &str) -> bool {
    name.ends_with(MEMORY_SLICES_SET)
}

fn sharing_counter_set(gpu_index: u32, shares: u32) -> CounterSet {
    CounterSet {
        name: sharing_set_name(gpu_index),
        counters: BTreeMap::from([(SHARES_COUNTER.to_string(), count(shares))]),
    }
}

fn consumes_shares(gpu_index: u32, c: SharingCounter) -> Vec<DeviceCounterConsumption> {
    vec![DeviceCounterConsumption {
        counter_set: sharing_set_name(gpu_index),
        counters: BTreeMap::from([(SHARES_COUNTER.to_string(), count(c.consumes))]),
    }]
}

fn count(n: u32) -> Counter {
    Counter {
        value: Quantity(n.to_string()),
    }
}

fn consumes(gpu: u32, slot: Slot) -> Vec<DeviceCounterConsumption> {
    vec![DeviceCounterConsumption {
        counter_set: counter_set_name(gpu),
        counters: (slot.start..slot.start + slot.size)
            .map(|s| (counter_name(s), count(1)))
            .collect(),
    }]
}

fn string(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.to_string()),
        ..Default::default()
    }
}

fn int(v: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(v),
        ..Default::default()
    }
}

fn capacity(q: String) -> DeviceCapacity {
    DeviceCapacity {
        value: Quantity(q),
        request_policy: None,
    }
}

fn mib(mb: u64) -> String {
    format!("{mb}Mi")
}

/// One published device as the ResourceSlice lists it. Attributes say what it is (CEL selects
/// on them: `device.attributes["gpu.gpushare.dev"].type == "mig"`), capacities how much of it
/// there is.
fn device(p: &Published) -> Device {
    let gpu = &p.gpu;
    let mut attributes = BTreeMap::from([
        ("index".to_string(), int(i64::from(gpu.index))),
        ("uuid".to_string(), string(&gpu.uuid)),
        ("productName".to_string(), string(&gpu.name)),
    ]);
    let mut caps = BTreeMap::new();
    let mut out = Device {
        name: p.name.to_string(),
        ..Default::default()
    };
    match &p.kind {
        Kind::Mig {
            profile,
            slot,
            offer,
        } => {
            attributes.insert("type".into(), string("mig"));
            attributes.insert("profile".into(), string(&profile.name));
            attributes.insert("placementStart".into(), int(i64::from(slot.start)));
            attributes.insert("placementSize".into(), int(i64::from(slot.size)));
            // Informational: the scheduler's first fit already prefers warm devices.
            attributes.insert(
                "warm".into(),
                DeviceAttribute {
                    bool: Some(matches!(offer, Offer::Warm(_))),
                    ..Default::default()
                },
            );
            mig_capacity(&mut caps, profile);
            out.consumes_counters = Some(consumes(gpu.index, *slot));
        }
        Kind::Whole { shared } => {
            attributes.insert("type".into(), string("whole"));
            // Time-slicing divides nothing: a shared whole GPU has no capacity to consume
            // (listed, every capacity of a shared device would be consumed in full by default).
            if !shared {
                caps.insert("memory".into(), capacity(bytes(gpu.memory_total)));
            }
            out.allow_multiple_allocations = shared.then_some(true);
        }
        Kind::Mps { percent, shared } => {
            attributes.insert("type".into(), string("mps"));
            let mut c = capacity(percent.to_string());
            if *shared {
                // A claim asks `capacity.requests: {gpu.gpushare.dev/smPercent: "33"}`; one
                // that asks nothing takes the whole GPU's share, never more than there is.
                c.request_policy = Some(CapacityRequestPolicy {
                    default: Some(Quantity(percent.to_string())),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: Quantity("1".into()),
                        max: Some(Quantity(percent.to_string())),
                        step: Some(Quantity("1".into())),
                    }),
                    valid_values: None,
                });
            }
            caps.insert("smPercent".into(), c);
            out.allow_multiple_allocations = shared.then_some(true);
        }
    }
    if let Some(c) = p.sharing_counter {
        out.consumes_counters = Some(consumes_shares(gpu.index, c));
    }
    out.attributes = Some(attributes);
    out.capacity = (!caps.is_empty()).then_some(caps);
    out
}

fn mig_capacity(caps: &mut BTreeMap<String, DeviceCapacity>, profile: &Profile) {
    if profile.memory_mb > 0 {
        caps.insert("memory".into(), capacity(mib(profile.memory_mb)));
    }
    if profile.multiprocessors > 0 {
        caps.insert(
            "multiprocessors".into(),
            capacity(profile.multiprocessors.to_string()),
        );
    }
}

fn bytes(b: u64) -> String {
    b.to_string()
}

/// The DeviceClass names a claim's request gives as `deviceClassName`.
pub const CLASS_MIG: &str = "mig.gpu.gpushare.dev";
pub const CLASS_WHOLE: &str = "whole.gpu.gpushare.dev";
pub const CLASS_MPS: &str = "mps.gpu.gpushare.dev";

/// gpushare's DeviceClasses: one per way of sharing a GPU, each selecting this driver's devices
/// of that type (packaging/kubernetes/deviceclasses.yaml is this, as YAML).
pub fn device_classes() -> Vec<DeviceClass> {
    [(CLASS_MIG, "mig"), (CLASS_WHOLE, "whole"), (CLASS_MPS, "mps")]
        .into_iter()
        .map(|(name, kind)| DeviceClass {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: DeviceClassSpec {
                selectors: Some(vec![DeviceSelector {
                    cel: Some(CELDeviceSelector {
                        expression: format!(
                            "device.driver == \"{DRIVER}\" && device.attributes[\"{DRIVER}\"].type == \"{kind}\""
                        ),
                    }),
                }]),
                ..Default::default()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_core::dra_devices::{node_devices, Sharing};
    use gpushare_core::dra_name::DeviceName;
    use gpushare_core::ledger::LedgerState;
    use gpushare_core::testing::{gpu_record as gpu, h100_profiles, instance_record as instance};
    use k8s_openapi::api::resource::v1::ResourceSlice;
    use std::collections::BTreeSet;

    /// A busy node: `mig` MIG GPUs with leased and idle instances, two GPUs outside MIG.
    pub(crate) fn node_state(mig: u32) -> LedgerState {
        let mut gpus: Vec<GpuRecord> = (0..mig).map(|i| gpu(i, true)).collect();
        gpus.push(gpu(mig, false));
        gpus.push(gpu(mig + 1, false));
        let mut instances = Vec::new();
        for g in gpus.iter().filter(|g| g.mig_enabled) {
            match g.index % 3 {
                0 => {
                    instances.push(instance(g, "3g.40gb", 4, true));
                    instances.push(instance(g, "1g.10gb", 0, false));
                }
                1 => instances.push(instance(g, "2g.20gb", 2, false)),
                _ => {}
            }
        }
        LedgerState {
            gpus,
            instances,
            ..Default::default()
        }
    }

    fn published(st: &LedgerState, sharing: Sharing) -> Vec<gpushare_core::dra_devices::Published> {
        node_devices(&Config::default(), st, sharing, &[]).unwrap()
    }

    use gpushare_core::config::Config;

    fn devices_in_order(slices: &[ResourceSlice]) -> Vec<String> {
        let mut sorted: Vec<&ResourceSlice> = slices.iter().collect();
        sorted.sort_by_key(|s| s.metadata.name.clone());
        sorted
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .map(|d| d.name.clone())
            .collect()
    }

    /// What the API server's validation of resource.k8s.io/v1 would refuse, for each shape.
    fn check_limits(slices: &[ResourceSlice], shape: Shape) {
        let pool_sets: Vec<&CounterSet> = slices
            .iter()
            .flat_map(|s| s.spec.shared_counters.iter().flatten())
            .collect();
        let names: BTreeSet<&str> = pool_sets.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names.len(),
            pool_sets.len(),
            "counter set names unique in the pool"
        );
        let mut device_names = BTreeSet::new();
        for s in slices {
            assert_eq!(s.spec.pool.resource_slice_count, slices.len() as i64);
            assert_eq!(s.spec.driver, DRIVER);
            let devs = s.spec.devices.as_deref().unwrap_or_default();
            let sets = s.spec.shared_counters.as_deref().unwrap_or_default();
            let counting = devs.iter().any(|d| d.consumes_counters.is_some());
            assert!(devs.len() <= if counting { 64 } else { 128 });
            match shape {
                Shape::V1_35 => {
                    assert!(devs.is_empty() || sets.is_empty(), "1.35: one or the other");
                    assert!(sets.len() <= MAX_COUNTER_SETS_1_35);
                }
                Shape::V1_34 => {
                    let n: usize = sets.iter().map(|c| c.counters.len()).sum();
                    assert!(n <= 32, "1.34: {n} counters in one slice");
                }
            }
            for d in devs {
                assert!(gpushare_core::dra_name::is_dns_label(&d.name));
                assert!(device_names.insert(d.name.clone()), "{} twice", d.name);
                let attrs = d.attributes.as_ref().map_or(0, |a| a.len());
                let caps = d.capacity.as_ref().map_or(0, |c| c.len());
                assert!(attrs + caps <= 32);
                for c in d.consumes_counters.iter().flatten() {
                    // 1.34: the set is in the device's own slice; 1.35: anywhere in the pool.
                    let set = match shape {
                        Shape::V1_34 => sets.iter().find(|x| x.name == c.counter_set),
                        Shape::V1_35 => pool_sets.iter().copied().find(|x| x.name == c.counter_set),
                    };
                    let set = set.unwrap_or_else(|| panic!("{}: no set {}", d.name, c.counter_set));
                    assert!(c.counters.keys().all(|k| set.counters.contains_key(k)));
                }
            }
        }
    }

    #[test]
    fn slices_round_trip_through_the_typed_resource_k8s_io_v1_objects() {
        let st = node_state(8);
        for shape in [Shape::V1_34, Shape::V1_35] {
            for sharing in [Sharing::Consumable, Sharing::Counted { shares: 4 }] {
                let slices =
                    resource_slices("node-a.example", &published(&st, sharing), shape, 3).unwrap();
                for s in &slices {
                    let json = serde_json::to_value(s).unwrap();
                    assert_eq!(json["apiVersion"], "resource.k8s.io/v1");
                    assert_eq!(json["kind"], "ResourceSlice");
                    assert_eq!(json["spec"]["pool"]["name"], "node-a.example");
                    assert_eq!(json["spec"]["pool"]["generation"], 3);
                    let back: ResourceSlice = serde_json::from_str(&json.to_string()).unwrap();
                    assert_eq!(&back, s);
                }
                check_limits(&slices, shape);
            }
        }
    }

    #[test]
    fn the_1_35_shape_lists_devices_in_core_order_across_slices() {
        let st = node_state(16);
        let devices = published(&st, Sharing::Consumable);
        let slices = resource_slices("n1", &devices, Shape::V1_35, 1).unwrap();
        let want: Vec<String> = devices.iter().map(|d| d.name.to_string()).collect();
        assert_eq!(devices_in_order(&slices), want);
        // 16 GPUs: two slices of 8 counter sets, and more devices than one slice may hold.
        let set_slices = slices.iter().filter(|s| s.spec.shared_counters.is_some());
        assert_eq!(set_slices.count(), 2);
        assert!(want.len() > 64, "{}", want.len());
        // Warm devices of every GPU are walked first.
        let first = &slices.iter().find(|s| s.spec.devices.is_some()).unwrap();
        let d0 = &first.spec.devices.as_ref().unwrap()[0];
        assert_eq!(d0.attributes.as_ref().unwrap()["warm"].bool, Some(true));
        check_limits(&slices, Shape::V1_35);
    }

    #[test]
    fn the_1_34_shape_groups_gpus_with_their_counter_sets() {
        let st = node_state(8);
        let slices =
            resource_slices("n1", &published(&st, Sharing::Consumable), Shape::V1_34, 1).unwrap();
        check_limits(&slices, Shape::V1_34);
        // 8 memory slices an H100: four GPUs a slice, then one for the GPUs outside MIG.
        let with_sets: Vec<usize> = slices
            .iter()
            .filter_map(|s| s.spec.shared_counters.as_ref().map(Vec::len))
            .collect();
        assert_eq!(with_sets, [4, 4]);
        assert_eq!(slices.len(), 3);
    }

    /// Each MIG device consumes exactly the memory slices of the placement its name says, so
    /// core's property (counters never admit devices that do not fit together) holds of what
    /// the API server gets.
    #[test]
    fn counters_consumed_are_the_placement_the_name_says() {
        let st = node_state(4);
        let profiles = h100_profiles();
        let slices =
            resource_slices("n1", &published(&st, Sharing::Consumable), Shape::V1_35, 1).unwrap();
        let mut mig = 0;
        for d in slices.iter().flat_map(|s| s.spec.devices.iter().flatten()) {
            let name: DeviceName = d.name.parse().unwrap();
            let attrs = d.attributes.as_ref().unwrap();
            let DeviceName::Mig { gpu, start, .. } = &name else {
                assert!(d.consumes_counters.is_none(), "{}", d.name);
                continue;
            };
            mig += 1;
            let p = name.profile(&profiles).unwrap();
            let slot = p.placements.iter().find(|s| s.start == *start).unwrap();
            let c = d.consumes_counters.as_ref().unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].counter_set, counter_set_name(*gpu));
            let want: BTreeSet<String> = (slot.start..slot.start + slot.size)
                .map(counter_name)
                .collect();
            assert_eq!(c[0].counters.keys().cloned().collect::<BTreeSet<_>>(), want);
            assert_eq!(attrs["profile"].string.as_deref(), Some(p.name.as_str()));
            assert_eq!(attrs["placementStart"].int, Some(i64::from(*start)));
            assert_eq!(attrs["index"].int, Some(i64::from(*gpu)));
        }
        assert!(mig > 0);
    }

    /// The memory slices of its GPU a device's name says it takes (from the GPU's profiles, not
    /// from its counters), if it is a MIG device.
    fn memory_slices_named(name: &str, profiles: &[Profile]) -> Option<(u32, BTreeSet<u32>)> {
        let name: DeviceName = name.parse().unwrap();
        let DeviceName::Mig { gpu, start, .. } = &name else {
            return None;
        };
        let p = name.profile(profiles).unwrap();
        let slot = p.placements.iter().find(|s| s.start == *start).unwrap();
        Some((*gpu, (slot.start..slot.start + slot.size).collect()))
    }

    /// Whether the scheduler may allocate `devs` together: what they consume of every counter
    /// fits what the pool's counter sets hold (resource.k8s.io/v1 allocation rules).
    fn counters_admit(slices: &[ResourceSlice], devs: &[&Device]) -> bool {
        let value = |q: &Quantity| -> i64 { q.0.parse().expect("counter values are integers") };
        let mut left: BTreeMap<(String, String), i64> = BTreeMap::new();
        for set in slices
            .iter()
            .flat_map(|s| s.spec.shared_counters.iter().flatten())
        {
            for (name, c) in &set.counters {
                left.insert((set.name.clone(), name.clone()), value(&c.value));
            }
        }
        for d in devs {
            for c in d.consumes_counters.iter().flatten() {
                for (name, used) in &c.counters {
                    let Some(n) = left.get_mut(&(c.counter_set.clone(), name.clone())) else {
                        return false;
                    };
                    *n -= value(&used.value);
                    if *n < 0 {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Issue #20's "counters never let two allocatable devices overlap on a memory slice",
    /// checked on what the API server gets (the typed objects, read back from their JSON), in
    /// both shapes: every MIG device fits alone, and any two the counters admit together take
    /// disjoint memory slices by their names.
    #[test]
    fn counters_never_let_two_allocatable_devices_overlap_on_a_memory_slice() {
        let profiles = h100_profiles();
        for st in [node_state(6), node_state(0)] {
            for shape in [Shape::V1_34, Shape::V1_35] {
                for sharing in [Sharing::Consumable, Sharing::Counted { shares: 3 }] {
                    let slices: Vec<ResourceSlice> =
                        resource_slices("n1", &published(&st, sharing), shape, 1)
                            .unwrap()
                            .iter()
                            .map(|s| serde_json::from_value(serde_json::to_value(s).unwrap()))
                            .collect::<Result<_, _>>()
                            .unwrap();
                    let mig: Vec<(&Device, (u32, BTreeSet<u32>))> = slices
                        .iter()
                        .flat_map(|s| s.spec.devices.iter().flatten())
                        .filter_map(|d| memory_slices_named(&d.name, &profiles).map(|m| (d, m)))
                        .collect();
                    let mut overlapping = 0;
                    for (i, (a, (ga, ma))) in mig.iter().enumerate() {
                        assert!(counters_admit(&slices, &[a]), "{} alone", a.name);
                        for (b, (gb, mb)) in &mig[i + 1..] {
                            if ga == gb && !ma.is_disjoint(mb) {
                                overlapping += 1;
                                assert!(
                                    !counters_admit(&slices, &[a, b]),
                                    "{shape:?} {sharing:?}: {} and {} share a memory slice",
                                    a.name,
                                    b.name
                                );
                            }
                        }
                    }
                    // Overlapping devices are published (new instances over idle ones, every
                    // profile's device on an empty GPU), so the check had pairs to refuse.
                    assert_eq!(overlapping > 0, !mig.is_empty(), "{shape:?} {sharing:?}");
                }
            }
        }
    }

    /// A node of `n` GPUs outside MIG, idle.
    fn outside_mig(n: u32) -> LedgerState {
        LedgerState {
            gpus: (0..n).map(|i| gpu(i, false)).collect(),
            ..Default::default()
        }
    }

    /// The gap of issue #20 closed for counted devices: on an idle GPU both its whole device
    /// and its MPS shares are published, and the sharing counter is what keeps the scheduler
    /// from allocating the whole GPU to one claim and a share to another (gpushare would refuse
    /// the second prepare). Checked on what the API server gets, in both shapes, with enough
    /// GPUs that the counter sets span several slices; the whole GPU alone and every share at
    /// once stay allocatable.
    #[test]
    fn sharing_counters_never_let_the_whole_gpu_beside_an_mps_share() {
        for st in [outside_mig(1), node_state(3), outside_mig(40)] {
            for shape in [Shape::V1_34, Shape::V1_35] {
                let slices: Vec<ResourceSlice> = resource_slices(
                    "n1",
                    &published(&st, Sharing::Counted { shares: 4 }),
                    shape,
                    1,
                )
                .unwrap()
                .iter()
                .map(|s| serde_json::from_value(serde_json::to_value(s).unwrap()))
                .collect::<Result<_, _>>()
                .unwrap();
                check_limits(&slices, shape);
                let devs: Vec<&Device> = slices
                    .iter()
                    .flat_map(|s| s.spec.devices.iter().flatten())
                    .collect();
                let outside = st.gpus.iter().filter(|g| !g.mig_enabled);
                let mut tied = 0;
                for g in outside {
                    let of = |suffix: &str| -> Vec<&Device> {
                        devs.iter()
                            .copied()
                            .filter(|d| d.name.starts_with(&format!("gpu{}-{suffix}", g.index)))
                            .collect()
                    };
                    let (whole, shares) = (of("whole"), of("mps-"));
                    assert_eq!((whole.len(), shares.len()), (1, 4), "gpu{}", g.index);
                    assert!(counters_admit(&slices, &whole), "{shape:?}: whole alone");
                    assert!(counters_admit(&slices, &shares), "{shape:?}: every share");
                    for s in &shares {
                        assert!(
                            !counters_admit(&slices, &[whole[0], s]),
                            "{shape:?}: {} beside {}",
                            whole[0].name,
                            s.name
                        );
                    }
                    tied += 1;
                }
                assert!(tied > 0);
                let sets = slices
                    .iter()
                    .flat_map(|s| s.spec.shared_counters.iter().flatten())
                    .filter(|c| !is_memory_slices_set(&c.name))
                    .count();
                assert_eq!(sets, tied, "one sharing set per GPU outside MIG");
            }
        }
        // Devices several claims share are not tied (docs/kubernetes.md says why).
        let slices = resource_slices(
            "n1",
            &published(&outside_mig(2), Sharing::Consumable),
            Shape::V1_35,
            1,
        )
        .unwrap();
        assert!(slices.iter().all(|s| s.spec.shared_counters.is_none()));
        assert!(slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .all(|d| d.consumes_counters.is_none()));
    }

    #[test]
    fn the_1_34_shape_refuses_more_tied_devices_than_a_slice_holds() {
        let st = outside_mig(1);
        let many = published(&st, Sharing::Counted { shares: 100 });
        assert!(matches!(
            resource_slices("n1", &many, Shape::V1_34, 1),
            Err(SlicesError::TooManyShares {
                gpu: 0,
                devices: 101
            })
        ));
        let slices = resource_slices("n1", &many, Shape::V1_35, 1).unwrap();
        check_limits(&slices, Shape::V1_35);
    }

    #[test]
    fn shared_devices_allow_multiple_allocations_and_counted_ones_do_not() {
        let st = node_state(0);
        let slices =
            resource_slices("n1", &published(&st, Sharing::Consumable), Shape::V1_35, 1).unwrap();
        let devs: Vec<&Device> = slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .collect();
        assert_eq!(devs.len(), 4);
        assert!(devs
            .iter()
            .all(|d| d.allow_multiple_allocations == Some(true)));
        let mps = devs.iter().find(|d| d.name == "gpu0-mps").unwrap();
        let cap = &mps.capacity.as_ref().unwrap()["smPercent"];
        assert_eq!(cap.value.0, "100");
        assert!(cap.request_policy.as_ref().unwrap().valid_range.is_some());
        let counted = resource_slices(
            "n1",
            &published(&st, Sharing::Counted { shares: 2 }),
            Shape::V1_35,
            1,
        )
        .unwrap();
        let names = devices_in_order(&counted);
        assert_eq!(
            names,
            [
                "gpu0-whole",
                "gpu0-mps-0",
                "gpu0-mps-1",
                "gpu1-whole",
                "gpu1-mps-0",
                "gpu1-mps-1"
            ]
        );
        assert!(counted
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .all(|d| d.allow_multiple_allocations.is_none()));
    }

    #[test]
    fn a_node_with_nothing_to_offer_publishes_its_pool_empty() {
        for shape in [Shape::V1_34, Shape::V1_35] {
            let slices = resource_slices("n1", &[], shape, 7).unwrap();
            assert_eq!(slices.len(), 1);
            let s = &slices[0];
            assert_eq!(s.spec.pool.name, "n1");
            assert_eq!(s.spec.pool.resource_slice_count, 1);
            assert!(s.spec.devices.is_none() && s.spec.shared_counters.is_none());
            let back: ResourceSlice =
                serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            assert_eq!(&back, s);
        }
    }

    #[test]
    fn a_node_name_that_cannot_name_a_pool_is_refused() {
        let st = node_state(1);
        for bad in ["", "Node", "a_b", ".a", &"a".repeat(231)] {
            assert!(matches!(
                resource_slices(bad, &published(&st, Sharing::Consumable), Shape::V1_35, 1),
                Err(SlicesError::NodeName { .. })
            ));
        }
    }

    #[test]
    fn device_classes_select_this_driver_by_type() {
        let classes = device_classes();
        let names: Vec<&str> = classes
            .iter()
            .map(|c| c.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, [CLASS_MIG, CLASS_WHOLE, CLASS_MPS]);
        for c in &classes {
            let json = serde_json::to_string(c).unwrap();
            let back: DeviceClass = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, c);
        }
        let cel = &classes[0].spec.selectors.as_ref().unwrap()[0];
        assert_eq!(
            cel.cel.as_ref().unwrap().expression,
            r#"device.driver == "gpu.gpushare.dev" && device.attributes["gpu.gpushare.dev"].type == "mig""#
        );
    }

    /// Every object of a manifest file, typed by its kind; an unknown kind or field fails.
    fn typed_objects(file: &str, text: &str) -> Vec<(String, serde_json::Value)> {
        use k8s_openapi::api::{apps, core, node, rbac, resource};
        let mut out = Vec::new();
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        for v in docs {
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let s = v.to_string();
            let typed = match kind.as_str() {
                "DeviceClass" => serde_json::to_value(
                    serde_json::from_str::<resource::v1::DeviceClass>(&s).unwrap(),
                ),
                "ResourceClaimTemplate" => serde_json::to_value(
                    serde_json::from_str::<resource::v1::ResourceClaimTemplate>(&s).unwrap(),
                ),
                "Pod" => serde_json::to_value(serde_json::from_str::<core::v1::Pod>(&s).unwrap()),
                "Namespace" => {
                    serde_json::to_value(serde_json::from_str::<core::v1::Namespace>(&s).unwrap())
                }
                "ServiceAccount" => serde_json::to_value(
                    serde_json::from_str::<core::v1::ServiceAccount>(&s).unwrap(),
                ),
                "ConfigMap" => {
                    serde_json::to_value(serde_json::from_str::<core::v1::ConfigMap>(&s).unwrap())
                }
                "DaemonSet" => {
                    serde_json::to_value(serde_json::from_str::<apps::v1::DaemonSet>(&s).unwrap())
                }
                "ClusterRole" => {
                    serde_json::to_value(serde_json::from_str::<rbac::v1::ClusterRole>(&s).unwrap())
                }
                "ClusterRoleBinding" => serde_json::to_value(
                    serde_json::from_str::<rbac::v1::ClusterRoleBinding>(&s).unwrap(),
                ),
                "RuntimeClass" => serde_json::to_value(
                    serde_json::from_str::<node::v1::RuntimeClass>(&s).unwrap(),
                ),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
            .unwrap();
            // The typed object carries every field the file gives: nothing misspelt or unknown
            // was dropped on the way.
            assert_eq!(typed, v, "{file}: {kind} loses fields as a typed object");
            out.push((kind, v));
        }
        out
    }

    macro_rules! manifest {
        ($f:literal) => {
            ($f, include_str!(concat!("../../packaging/kubernetes/", $f)))
        };
    }

    #[test]
    fn packaging_manifests_are_typed_kubernetes_objects() {
        let files = [
            manifest!("runtimeclass.yaml"),
            manifest!("example-pod.yaml"),
            manifest!("dra/deviceclasses.yaml"),
            manifest!("dra/rbac.yaml"),
            manifest!("dra/daemonset.yaml"),
            manifest!("dra/mig-claim.yaml"),
            manifest!("dra/whole-claim.yaml"),
            manifest!("dra/mps-claim.yaml"),
        ];
        let mut kinds = Vec::new();
        for (file, text) in files {
            kinds.extend(typed_objects(file, text).into_iter().map(|o| o.0));
        }
        for k in [
            "DaemonSet",
            "ClusterRole",
            "ResourceClaimTemplate",
            "DeviceClass",
        ] {
            assert!(kinds.iter().any(|x| x == k), "no {k}");
        }
    }

    #[test]
    fn the_packaged_device_classes_are_the_ones_the_code_builds() {
        let (file, text) = manifest!("dra/deviceclasses.yaml");
        let from_file: Vec<DeviceClass> = typed_objects(file, text)
            .into_iter()
            .map(|(_, v)| serde_json::from_value(v).unwrap())
            .collect();
        assert_eq!(from_file, device_classes());
    }

    /// The example claims ask for what the node publishes: their class's selector and their
    /// own select a device of that type, by the attribute and capacity names slices.rs writes.
    #[test]
    fn the_example_claims_name_published_classes_attributes_and_capacities() {
        for (file, text, class, needle) in [
            (
                "mig-claim.yaml",
                include_str!("../../packaging/kubernetes/dra/mig-claim.yaml"),
                CLASS_MIG,
                "].profile == ",
            ),
            (
                "whole-claim.yaml",
                include_str!("../../packaging/kubernetes/dra/whole-claim.yaml"),
                CLASS_WHOLE,
                "",
            ),
            (
                "mps-claim.yaml",
                include_str!("../../packaging/kubernetes/dra/mps-claim.yaml"),
                CLASS_MPS,
                "gpu.gpushare.dev/smPercent",
            ),
        ] {
            let objs = typed_objects(file, text);
            let tmpl = &objs
                .iter()
                .find(|o| o.0 == "ResourceClaimTemplate")
                .unwrap()
                .1;
            let req = &tmpl["spec"]["spec"]["devices"]["requests"][0]["exactly"];
            assert_eq!(req["deviceClassName"], class, "{file}");
            assert!(req.to_string().contains(needle), "{file}");
            let pod = &objs.iter().find(|o| o.0 == "Pod").unwrap().1;
            assert_eq!(
                pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"],
                tmpl["metadata"]["name"],
                "{file}"
            );
        }
    }
}
