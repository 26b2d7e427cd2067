//! Lays out a node with the `gpushare-sim` binary, then drives the installed
//! `libnvidia-ml.so.1` through nvml-wrapper exactly as production code does.
use crate::common;

use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings as b;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

fn cdylib() -> PathBuf {
    common::target_dir().join("libgpushare_sim.so")
}

fn tmpdir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "gpushare-sim-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(common::sim_bin()).args(args).output().unwrap()
}

fn sim_ok(args: &[&str]) -> String {
    let o = sim(args);
    assert!(
        o.status.success(),
        "gpushare-sim {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn init_node(name: &str, model: &str, gpus: &str) -> PathBuf {
    let root = tmpdir(name);
    let lib = cdylib();
    sim_ok(&[
        "init",
        "--root",
        root.to_str().unwrap(),
        "--model",
        model,
        "--gpus",
        gpus,
        "--lib",
        lib.to_str().unwrap(),
    ]);
    root
}

fn open(root: &Path) -> Nvml {
    let lib = root.join("usr/lib/libnvidia-ml.so.1");
    Nvml::builder().lib_path(OsStr::new(&lib)).init().unwrap()
}

fn version<T>(v: u32) -> u32 {
    (std::mem::size_of::<T>() as u32) | (v << 24)
}

fn caps(root: &Path) -> PathBuf {
    root.join("proc/driver/nvidia/capabilities/gpu0/mig")
}

#[test]
fn init_lays_out_the_node() {
    let root = init_node("layout", "h200-141gb", "2");
    let cfg = std::fs::read_to_string(root.join("config.toml")).unwrap();
    let r = root.display();
    assert_eq!(
        cfg,
        format!(
            "nvml_library = \"{r}/usr/lib/libnvidia-ml.so.1\"\ndriver_root = \"{r}\"\nstate_dir = \"{r}/var/lib/gpushare\"\n"
        )
    );
    let minors = std::fs::read_to_string(root.join("proc/driver/nvidia-caps/mig-minors")).unwrap();
    assert_eq!(minors.lines().count(), 4322);
    assert!(std::fs::read_to_string(root.join("proc/devices"))
        .unwrap()
        .contains("241 nvidia-caps\n"));
    assert_eq!(
        std::fs::read_to_string(root.join("proc/driver/nvidia/capabilities/mig/config")).unwrap(),
        "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n"
    );
    // Character devices with the driver's real numbers (nvidia 195, nvidia-uvm 238, nvidia-caps 241).
    for (p, major, minor) in [
        ("dev/nvidia0", 195, 0),
        ("dev/nvidia1", 195, 1),
        ("dev/nvidiactl", 195, 255),
        ("dev/nvidia-uvm", 238, 0),
        ("dev/nvidia-uvm-tools", 238, 1),
        ("dev/nvidia-caps/nvidia-cap1", 241, 1),
        ("dev/nvidia-caps/nvidia-cap2", 241, 2),
    ] {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(m.file_type().is_char_device(), "{p} is a character device");
        let rdev = m.rdev();
        assert_eq!(
            (libc::major(rdev), libc::minor(rdev)),
            (major, minor),
            "{p}"
        );
    }
    assert!(root
        .join("proc/driver/nvidia/capabilities/gpu1/mig")
        .is_dir());
    // Idempotent with the same arguments; refused with different ones unless --force.
    let lib = cdylib();
    let args = |model: &'static str| {
        vec![
            "init".to_string(),
            "--root".into(),
            root.display().to_string(),
            "--model".into(),
            model.into(),
            "--gpus".into(),
            "2".into(),
            "--lib".into(),
            lib.display().to_string(),
        ]
    };
    let st1 = sim_ok(&["show", "--root", root.to_str().unwrap()]);
    let a = args("h200-141gb");
    sim_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(st1, sim_ok(&["show", "--root", root.to_str().unwrap()]));
    let a = args("h100-80gb");
    let o = sim(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1));
    let mut a = args("h100-80gb");
    a.push("--force".into());
    sim_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let nvml = open(&root);
    assert_eq!(
        nvml.device_by_index(0).unwrap().name().unwrap(),
        "NVIDIA H100 80GB HBM3"
    );
    drop(nvml);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn mig_lifecycle_through_nvml_wrapper() {
    let root = init_node("lifecycle", "h100-80gb", "2");
    let nvml = open(&root);
    assert_eq!(nvml.sys_driver_version().unwrap(), "580.159.04");
    assert_eq!(nvml.sys_nvml_version().unwrap(), "13.580.159.04");
    assert_eq!(nvml.device_count().unwrap(), 2);
    let dev = nvml.device_by_index(0).unwrap();
    let gpu_uuid = dev.uuid().unwrap();
    assert!(gpu_uuid.starts_with("GPU-"), "{gpu_uuid}");
    assert_eq!(
        nvml.device_by_uuid(gpu_uuid.as_str())
            .unwrap()
            .index()
            .unwrap(),
        0
    );
    assert_eq!(dev.name().unwrap(), "NVIDIA H100 80GB HBM3");
    assert_eq!(dev.memory_info().unwrap().total, 85520809984);
    assert_eq!(dev.mig_mode().unwrap().current, 1);
    assert!(!dev.mig_is_mig_device_handle().unwrap());
    assert_eq!(dev.minor_number().unwrap(), 0);

    let lib = nvml.lib();
    // SAFETY: handles and out-pointers below are valid for each call.
    unsafe {
        let h = dev.handle();
        // Profile info by index, with the v2 struct's version word.
        let info_v = nvml_sym(lib.nvmlDeviceGetGpuInstanceProfileInfoV.as_ref()).unwrap();
        let mut info: b::nvmlGpuInstanceProfileInfo_v2_t = std::mem::zeroed();
        info.version = version::<b::nvmlGpuInstanceProfileInfo_v2_t>(2);
        nvml_try(info_v(h, b::NVML_GPU_INSTANCE_PROFILE_1_SLICE, &mut info)).unwrap();
        assert_eq!((info.id, info.sliceCount, info.memorySizeMB), (19, 1, 9984));
        let name = std::ffi::CStr::from_ptr(info.name.as_ptr())
            .to_str()
            .unwrap();
        assert_eq!(name, "MIG 1g.10gb");
        info.version = 1;
        assert_eq!(
            info_v(h, 0, &mut info),
            b::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
        info.version = version::<b::nvmlGpuInstanceProfileInfo_v2_t>(2);
        assert_eq!(
            info_v(h, 5, &mut info),
            b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            info_v(h, 17, &mut info),
            b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );

        let placements =
            nvml_sym(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2.as_ref()).unwrap();
        let mut count = 0u32;
        nvml_try(placements(h, 19, std::ptr::null_mut(), &mut count)).unwrap();
        assert_eq!(count, 7);
        let mut pl = vec![b::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
        nvml_try(placements(h, 19, pl.as_mut_ptr(), &mut count)).unwrap();
        assert_eq!((pl[6].start, pl[6].size), (6, 1));

        let remaining = nvml_sym(lib.nvmlDeviceGetGpuInstanceRemainingCapacity.as_ref()).unwrap();
        nvml_try(remaining(h, 19, &mut count)).unwrap();
        assert_eq!(count, 7);

        // Create a 1g.10gb at slot 3 (GI id 10), and fail to create it twice.
        let create = nvml_sym(lib.nvmlDeviceCreateGpuInstanceWithPlacement.as_ref()).unwrap();
        let place = b::nvmlGpuInstancePlacement_t { start: 3, size: 1 };
        let mut gi: b::nvmlGpuInstance_t = std::ptr::null_mut();
        nvml_try(create(h, 19, &place, &mut gi)).unwrap();
        assert!(!gi.is_null());
        let mut gi2: b::nvmlGpuInstance_t = std::ptr::null_mut();
        assert_eq!(
            create(h, 19, &place, &mut gi2),
            b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES
        );
        let bad = b::nvmlGpuInstancePlacement_t { start: 7, size: 1 };
        assert_eq!(
            create(h, 19, &bad, &mut gi2),
            b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        nvml_try(remaining(h, 19, &mut count)).unwrap();
        assert_eq!(count, 6);

        let gi_info = nvml_sym(lib.nvmlGpuInstanceGetInfo.as_ref()).unwrap();
        let mut gii: b::nvmlGpuInstanceInfo_t = std::mem::zeroed();
        nvml_try(gi_info(gi, &mut gii)).unwrap();
        assert_eq!((gii.id, gii.profileId, gii.placement.start), (10, 19, 3));
        assert_eq!(gii.device, h);
        assert!(caps(&root).join("gi10/access").is_file());
        assert_eq!(
            std::fs::read_to_string(caps(&root).join("gi10/access")).unwrap(),
            format!(
                "DeviceFileMinor: {}\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
                3 + 10 * 9
            )
        );

        let list = nvml_sym(lib.nvmlDeviceGetGpuInstances.as_ref()).unwrap();
        let mut gis = [std::ptr::null_mut(); 7];
        nvml_try(list(h, 19, gis.as_mut_ptr(), &mut count)).unwrap();
        assert_eq!((count, gis[0]), (1, gi));

        // The full compute instance.
        let ci_info_v =
            nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceProfileInfoV.as_ref()).unwrap();
        let mut cip: b::nvmlComputeInstanceProfileInfo_v2_t = std::mem::zeroed();
        cip.version = version::<b::nvmlComputeInstanceProfileInfo_v2_t>(2);
        nvml_try(ci_info_v(
            gi,
            b::NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
            0,
            &mut cip,
        ))
        .unwrap();
        assert_eq!(
            (
                cip.id,
                cip.sliceCount,
                cip.instanceCount,
                cip.multiprocessorCount
            ),
            (0, 1, 1, 16)
        );
        assert_eq!(
            ci_info_v(gi, b::NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE, 0, &mut cip),
            b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        );
        let create_ci = nvml_sym(lib.nvmlGpuInstanceCreateComputeInstance.as_ref()).unwrap();
        let mut ci: b::nvmlComputeInstance_t = std::ptr::null_mut();
        nvml_try(create_ci(gi, 0, &mut ci)).unwrap();
        let mut ci2: b::nvmlComputeInstance_t = std::ptr::null_mut();
        assert_eq!(
            create_ci(gi, 0, &mut ci2),
            b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES
        );
        let ci_info = nvml_sym(lib.nvmlComputeInstanceGetInfo_v2.as_ref()).unwrap();
        let mut cii: b::nvmlComputeInstanceInfo_t = std::mem::zeroed();
        nvml_try(ci_info(ci, &mut cii)).unwrap();
        assert_eq!((cii.id, cii.gpuInstance, cii.device), (0, gi, h));
        assert!(caps(&root).join("gi10/ci0/access").is_file());

        // The MIG device.
        assert_eq!(dev.mig_device_count().unwrap(), 7);
        let mig = dev.mig_device_by_index(0).unwrap();
        assert!(matches!(
            dev.mig_device_by_index(1),
            Err(NvmlError::NotFound)
        ));
        let mig_uuid = mig.uuid().unwrap();
        assert!(mig_uuid.starts_with("MIG-"), "{mig_uuid}");
        assert!(mig.mig_is_mig_device_handle().unwrap());
        assert_eq!(mig.mig_parent_device().unwrap().uuid().unwrap(), gpu_uuid);
        assert_eq!(mig.memory_info().unwrap().total, 9984 << 20);
        assert_eq!(mig.name().unwrap(), "NVIDIA H100 80GB HBM3 MIG 1g.10gb");
        let gid = nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref()).unwrap();
        let mut id = 99;
        nvml_try(gid(mig.handle(), &mut id)).unwrap();
        assert_eq!(id, 10);
        assert_eq!(
            nvml.device_by_uuid(mig_uuid.as_str())
                .unwrap()
                .uuid()
                .unwrap(),
            mig_uuid
        );

        // Destroy order and IN_USE.
        let destroy_gi = nvml_sym(lib.nvmlGpuInstanceDestroy.as_ref()).unwrap();
        let destroy_ci = nvml_sym(lib.nvmlComputeInstanceDestroy.as_ref()).unwrap();
        assert_eq!(destroy_gi(gi), b::nvmlReturn_enum_NVML_ERROR_IN_USE);
        let r = root.to_str().unwrap();
        sim_ok(&[
            "process",
            "add",
            "--root",
            r,
            "--uuid",
            &mig_uuid,
            "--pid",
            "4242",
            "--memory-mib",
            "100",
        ]);
        let procs = mig.running_compute_processes().unwrap();
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].pid, 4242);
        assert_eq!(dev.running_compute_processes().unwrap().len(), 1);
        assert_eq!(destroy_ci(ci), b::nvmlReturn_enum_NVML_ERROR_IN_USE);
        sim_ok(&[
            "process", "remove", "--root", r, "--uuid", &mig_uuid, "--pid", "4242",
        ]);
        assert!(mig.running_compute_processes().unwrap().is_empty());
        nvml_try(destroy_ci(ci)).unwrap();
        assert!(!caps(&root).join("gi10/ci0").exists());
        nvml_try(destroy_gi(gi)).unwrap();
        assert!(!caps(&root).join("gi10").exists());
        // Stale handles.
        assert_eq!(
            destroy_gi(gi),
            b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        assert!(mig.uuid().is_err());
        // Same placement again: same id, but the old handle stays stale.
        nvml_try(create(h, 19, &place, &mut gi2)).unwrap();
        assert_ne!(gi2, gi);
        assert_eq!(
            gi_info(gi, &mut gii),
            b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        );
        nvml_try(gi_info(gi2, &mut gii)).unwrap();
        assert_eq!(gii.id, 10);
        nvml_try(destroy_gi(gi2)).unwrap();
    }
    // MIG mode off, then instances are refused.
    let r = root.to_str().unwrap();
    sim_ok(&["mig", "--root", r, "--gpu", "1", "off"]);
    let dev1 = nvml.device_by_index(1).unwrap();
    assert_eq!(dev1.mig_mode().unwrap().current, 0);
    // SAFETY: valid handle and out-pointer.
    unsafe {
        let create = nvml_sym(nvml.lib().nvmlDeviceCreateGpuInstance.as_ref()).unwrap();
        let mut gi: b::nvmlGpuInstance_t = std::ptr::null_mut();
        assert_eq!(
            create(dev1.handle(), 19, &mut gi),
            b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        );
    }
    nvml.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// `gpushare-sim create-instance` of a 1g.10gb on GPU 0 of the node at `root`.
fn create_1g(root: &str) -> Command {
    let mut c = Command::new(common::sim_bin());
    c.args([
        "create-instance",
        "--root",
        root,
        "--gpu",
        "0",
        "--profile",
        "1g.10gb",
    ]);
    c
}

#[test]
fn concurrent_processes_see_one_gpu() {
    let root = init_node("concurrent", "h100-80gb", "1");
    let r = root.to_str().unwrap().to_string();
    // One after another: 7 fit, the 8th and 9th are refused.
    let children: Vec<_> = (0..9).map(|_| create_1g(&r).output()).collect::<Vec<_>>();
    let ok = children
        .iter()
        .filter(|o| o.as_ref().unwrap().status.success())
        .count();
    assert_eq!(ok, 7);
    // Already on: a no-op; turning it off is refused while instances exist.
    sim_ok(&["mig", "--root", &r, "--gpu", "0", "on"]);
    assert_eq!(
        sim(&["mig", "--root", &r, "--gpu", "0", "off"])
            .status
            .code(),
        Some(1)
    );
    let st: serde_json::Value = serde_json::from_str(&sim_ok(&["show", "--root", &r])).unwrap();
    let ids: Vec<u64> = st["gpus"][0]["gpu_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [7, 8, 9, 10, 11, 12, 13]);
    for id in ids {
        sim_ok(&[
            "destroy-instance",
            "--root",
            &r,
            "--gpu",
            "0",
            "--gi",
            &id.to_string(),
        ]);
    }
    // 16 concurrent processes against one lock: 7 GPU instances, no lost update.
    let kids: Vec<_> = (0..16)
        .map(|_| {
            create_1g(&r)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let ok = kids
        .into_iter()
        .map(|mut k| k.wait().unwrap().success())
        .filter(|s| *s)
        .count();
    assert_eq!(ok, 7);
    let st: serde_json::Value = serde_json::from_str(&sim_ok(&["show", "--root", &r])).unwrap();
    assert_eq!(st["gpus"][0]["gpu_instances"].as_array().unwrap().len(), 7);
    let nvml = open(&root);
    assert_eq!(
        nvml.device_by_index(0)
            .unwrap()
            .mig_device_count_or_default(),
        7
    );
    drop(nvml);
    let _ = std::fs::remove_dir_all(&root);
}

trait MigCount {
    fn mig_device_count_or_default(&self) -> u32;
}

impl MigCount for nvml_wrapper::Device<'_> {
    /// MIG devices that exist, by walking the indexes.
    fn mig_device_count_or_default(&self) -> u32 {
        (0..7)
            .take_while(|&i| self.mig_device_by_index(i).is_ok())
            .count() as u32
    }
}

#[test]
fn no_state_means_no_driver() {
    let dir = tmpdir("nostate");
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::copy(cdylib(), &lib).unwrap();
    let r = Nvml::builder().lib_path(OsStr::new(&lib)).init();
    assert!(
        matches!(r, Err(NvmlError::DriverNotLoaded)),
        "{:?}",
        r.err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn measured_latency_is_charged() {
    let root = init_node("latency", "h100-80gb", "1");
    let r = root.to_str().unwrap();
    sim_ok(&["latency", "--root", r, "measured"]);
    let t = std::time::Instant::now();
    let nvml = open(&root);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(11),
        "{:?}",
        t.elapsed()
    );
    let dev = nvml.device_by_index(0).unwrap();
    let t = std::time::Instant::now();
    dev.mig_mode().unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_micros(500));
    // SAFETY: valid handle and out-pointer.
    unsafe {
        let create = nvml_sym(nvml.lib().nvmlDeviceCreateGpuInstance.as_ref()).unwrap();
        let mut gi: b::nvmlGpuInstance_t = std::ptr::null_mut();
        let t = std::time::Instant::now();
        nvml_try(create(dev.handle(), 19, &mut gi)).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_secs(1));
    }
    sim_ok(&["latency", "--root", r, "none"]);
    let t = std::time::Instant::now();
    dev.mig_mode().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_millis(500));
    drop(nvml);
    let _ = std::fs::remove_dir_all(&root);
}

/// [`init_node`] with MIG mode off.
fn init_node_mig_off(name: &str, model: &str) -> PathBuf {
    let root = tmpdir(name);
    let lib = cdylib();
    sim_ok(&[
        "init",
        "--root",
        root.to_str().unwrap(),
        "--model",
        model,
        "--mig",
        "off",
        "--lib",
        lib.to_str().unwrap(),
    ]);
    root
}

fn process(root: &str, action: &str, uuid: &str, pid: &str) {
    sim_ok(&[
        "process", action, "--root", root, "--uuid", uuid, "--pid", pid,
    ]);
}

#[test]
fn hopper_switches_mig_mode_at_once_and_never_under_a_process() {
    for model in ["h100-80gb", "b200-180gb"] {
        let root = init_node_mig_off(&format!("switch-{model}"), model);
        let r = root.to_str().unwrap();
        let nvml = open(&root);
        let dev = nvml.device_by_index(0).unwrap();
        let uuid = dev.uuid().unwrap();
        let mode = |d: &nvml_wrapper::Device| {
            let m = d.mig_mode().unwrap();
            (m.current, m.pending)
        };
        assert_eq!(mode(&dev), (0, 0));
        // A process holds the GPU: the driver refuses, and nothing changes.
        process(r, "add", &uuid, "4242");
        let procs = dev.running_compute_processes().unwrap();
        assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [4242]);
        assert!(
            matches!(dev.set_mig_mode(true), Err(NvmlError::InUse)),
            "{model}"
        );
        assert_eq!(mode(&dev), (0, 0), "{model}: a refusal changes nothing");
        process(r, "remove", &uuid, "4242");
        // Idle: on at once, nothing pending.
        assert_eq!(
            dev.set_mig_mode(true).unwrap(),
            b::nvmlReturn_enum_NVML_SUCCESS
        );
        assert_eq!(mode(&dev), (1, 1), "{model}");
        sim_ok(&[
            "create-instance",
            "--root",
            r,
            "--gpu",
            "0",
            "--profile",
            if model == "b200-180gb" {
                "1g.23gb"
            } else {
                "1g.10gb"
            },
        ]);
        // Instances left: off is refused until they are destroyed.
        assert!(matches!(dev.set_mig_mode(false), Err(NvmlError::InUse)));
        sim_ok(&["destroy-instance", "--root", r, "--gpu", "0", "--gi", "7"]);
        dev.set_mig_mode(false).unwrap();
        assert_eq!(mode(&dev), (0, 0));
        drop(nvml);
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn a100_mig_mode_is_pending_until_a_gpu_reset() {
    let root = init_node_mig_off("pending", "a100-40gb");
    let r = root.to_str().unwrap();
    let nvml = open(&root);
    let dev = nvml.device_by_index(0).unwrap();
    let uuid = dev.uuid().unwrap();
    let mode = || {
        let m = dev.mig_mode().unwrap();
        (m.current, m.pending)
    };
    // The call succeeds; the activation status says the change awaits a reset.
    assert_eq!(
        dev.set_mig_mode(true).unwrap(),
        b::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED
    );
    assert_eq!(mode(), (0, 1), "pending, not current");
    // Instances need MIG mode current, as on the real driver.
    // SAFETY: valid handle and out-pointer.
    unsafe {
        let create = nvml_sym(nvml.lib().nvmlDeviceCreateGpuInstance.as_ref()).unwrap();
        let mut gi: b::nvmlGpuInstance_t = std::ptr::null_mut();
        assert_eq!(
            create(dev.handle(), 19, &mut gi),
            b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        );
    }
    assert!(
        !caps(&root).join("gi7").exists(),
        "nothing half-made in the driver's files"
    );
    // The CLI speaks as nvidia-smi does about a pending change.
    let o = sim(&["mig", "--root", r, "--gpu", "0", "on"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pending enable state") && err.contains("gpushare-sim reset"),
        "{err}"
    );
    // A reset is refused while a process holds the GPU, and then applies the change.
    process(r, "add", &uuid, "77");
    let o = sim(&["reset", "--root", r, "--gpu", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by 1 process"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(mode(), (0, 1));
    process(r, "remove", &uuid, "77");
    sim_ok(&["reset", "--root", r, "--gpu", "0"]);
    assert_eq!(mode(), (1, 1), "the reset made it current");
    sim_ok(&[
        "create-instance",
        "--root",
        r,
        "--gpu",
        "0",
        "--profile",
        "1g.5gb",
    ]);
    assert!(caps(&root).join("gi7/ci0/access").is_file());
    // A reset leaves no MIG device behind (they do not survive one).
    sim_ok(&["reset", "--root", r, "--gpu", "0"]);
    assert!(dev.mig_device_by_index(0).is_err());
    assert!(!caps(&root).join("gi7").exists());
    // Turning it off is pending as well; asking for the current mode cancels it.
    assert_eq!(
        dev.set_mig_mode(false).unwrap(),
        b::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED
    );
    assert_eq!(mode(), (1, 0));
    assert_eq!(
        dev.set_mig_mode(true).unwrap(),
        b::nvmlReturn_enum_NVML_SUCCESS
    );
    assert_eq!(mode(), (1, 1));
    drop(nvml);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn compute_mode_of_a_mig_gpu_lives_on_its_mig_devices_and_is_only_default() {
    use nvml_wrapper::enum_wrappers::device::ComputeMode;
    let root = init_node("mig-compute-mode", "h100-80gb", "1");
    let r = root.to_str().unwrap();
    sim_ok(&[
        "create-instance",
        "--root",
        r,
        "--gpu",
        "0",
        "--profile",
        "3g.40gb",
    ]);
    let nvml = open(&root);
    let mut dev = nvml.device_by_index(0).unwrap();
    // "If MIG is enabled on a GPU, device must be MIG device handle."
    assert!(matches!(dev.compute_mode(), Err(NvmlError::NotSupported)));
    assert!(matches!(
        dev.set_compute_mode(ComputeMode::ExclusiveProcess),
        Err(NvmlError::NotSupported)
    ));
    let mut mig = dev.mig_device_by_index(0).unwrap();
    assert_eq!(mig.compute_mode().unwrap(), ComputeMode::Default);
    mig.set_compute_mode(ComputeMode::Default).unwrap();
    // EXCLUSIVE_PROCESS "is not supported when the GPU is in MIG mode" (MIG User Guide).
    for m in [ComputeMode::ExclusiveProcess, ComputeMode::Prohibited] {
        assert!(
            matches!(mig.set_compute_mode(m), Err(NvmlError::NotSupported)),
            "{m:?}"
        );
    }
    assert_eq!(mig.compute_mode().unwrap(), ComputeMode::Default);
    // A process on the MIG device: listed on its handle and, for a privileged caller, on
    // the GPU's.
    let mig_uuid = mig.uuid().unwrap();
    process(r, "add", &mig_uuid, "31");
    process(r, "add", &mig_uuid, "32");
    let pids = |d: &nvml_wrapper::Device| {
        d.running_compute_processes()
            .unwrap()
            .iter()
            .map(|p| p.pid)
            .collect::<Vec<_>>()
    };
    assert_eq!(pids(&mig), [31, 32]);
    assert_eq!(pids(&dev), [31, 32]);
    drop(nvml);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn new_models_lay_out_and_answer_their_tables() {
    for (model, name, profiles, total_mib) in [
        ("b200-180gb", "NVIDIA B200", "1g.23gb", 183359u64),
        ("h100-nvl-94gb", "NVIDIA H100 NVL", "1g.12gb", 95830),
        ("gh200-96gb", "NVIDIA GH200 480GB", "1g.12gb", 97871),
        ("h20-96gb", "NVIDIA H20", "1g.12gb", 97871),
    ] {
        let root = init_node(&format!("model-{model}"), model, "1");
        let nvml = open(&root);
        let dev = nvml.device_by_index(0).unwrap();
        assert_eq!(dev.name().unwrap(), name);
        assert_eq!(dev.memory_info().unwrap().total, total_mib << 20, "{model}");
        let out = sim_ok(&[
            "create-instance",
            "--root",
            root.to_str().unwrap(),
            "--gpu",
            "0",
            "--profile",
            profiles,
        ]);
        let made: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (made["gi"].as_u64(), made["start"].as_u64()),
            (Some(7), Some(0))
        );
        let mig = dev.mig_device_by_index(0).unwrap();
        assert_eq!(mig.name().unwrap(), format!("{name} MIG {profiles}"));
        drop(nvml);
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn one_mps_control_stand_in_per_mig_device() {
    let root = init_node("mps-per-mig", "h100-80gb", "1");
    let r = root.to_str().unwrap();
    let mut uuids = vec![];
    for _ in 0..2 {
        let out = sim_ok(&[
            "create-instance",
            "--root",
            r,
            "--gpu",
            "0",
            "--profile",
            "3g.40gb",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        uuids.push(v["mig_uuid"].as_str().unwrap().to_string());
    }
    // One daemon per MIG device: its own pipe folder, the MIG UUID as its only visible device.
    let control = |dir: &Path, uuid: &str| {
        let mut c = Command::new(common::fake_mps_control());
        c.env("CUDA_MPS_PIPE_DIRECTORY", dir.join("pipe"))
            .env("CUDA_MPS_LOG_DIRECTORY", dir.join("log"))
            .env("CUDA_VISIBLE_DEVICES", uuid);
        c
    };
    let dirs: Vec<PathBuf> = (0..2).map(|i| root.join(format!("mps{i}"))).collect();
    for (d, u) in dirs.iter().zip(&uuids) {
        assert!(control(d, u).arg("-d").status().unwrap().success());
    }
    for (d, u) in dirs.iter().zip(&uuids) {
        let sock = d.join("pipe/control");
        let t = std::time::Instant::now();
        while !sock.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(sock.exists(), "{}", sock.display());
        let log = std::fs::read_to_string(d.join("log/control.log")).unwrap();
        assert!(log.contains(&format!("visible={u}")), "{log}");
    }
    for (d, u) in dirs.iter().zip(&uuids) {
        let mut quit = control(d, u)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        quit.stdin.take().unwrap().write_all(b"quit\n").unwrap();
        assert!(quit.wait().unwrap().success());
        let log = std::fs::read_to_string(d.join("log/control.log")).unwrap();
        assert!(log.contains("exit pid="), "{log}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
