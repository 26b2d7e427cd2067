//! What the `gpushare-sim` commands do to a simulated node laid out under a root directory.

use crate::driver_files;
use crate::error::{Ret, SimError, SimResult, IN_USE};
use crate::mig;
use crate::models;
use crate::state::{random_uuid, Gpu, Latency, Process, State, Store, STATE_VERSION};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the library sits under the root.
pub const LIB_REL: &str = "usr/lib/libnvidia-ml.so.1";
/// gpushare's state directory under the root.
pub const STATE_DIR_REL: &str = "var/lib/gpushare";

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub root: PathBuf,
    pub model: String,
    pub gpus: u32,
    pub mig: bool,
    pub latency: Latency,
    /// The cdylib to install; default: `libgpushare_sim.so` beside the running executable.
    pub lib: Option<PathBuf>,
    pub force: bool,
}

/// What `init` did, for the CLI to report.
#[derive(Debug)]
pub struct InitReport {
    pub root: PathBuf,
    pub reused_state: bool,
    /// Device nodes that had to be regular files (mknod refused).
    pub fallback_nodes: Vec<PathBuf>,
}

fn io<T>(what: &Path, r: std::io::Result<T>) -> SimResult<T> {
    r.map_err(|e| SimError::io(&what.display().to_string(), e))
}

fn default_lib() -> SimResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| SimError::io("current_exe", e))?;
    Ok(exe
        .parent()
        .map(|d| d.join("libgpushare_sim.so"))
        .unwrap_or_else(|| PathBuf::from("libgpushare_sim.so")))
}

fn toml_str(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Installs a file by copy to a temporary name and rename, so a process that has the old copy
/// mapped keeps a consistent file.
fn install(src: &Path, dst: &Path) -> SimResult<()> {
    if let Some(d) = dst.parent() {
        io(d, fs::create_dir_all(d))?;
    }
    let tmp = dst.with_extension(format!("tmp.{}", std::process::id()));
    io(src, fs::copy(src, &tmp))?;
    io(dst, fs::rename(&tmp, dst))
}

/// `gpushare-sim init`: lays out a simulated node under `opts.root`.
pub fn init(opts: &InitOptions) -> SimResult<InitReport> {
    let model = models::model(&opts.model).ok_or_else(|| {
        SimError::Usage(format!(
            "unknown model {:?} (known: {})",
            opts.model,
            models::model_keys().join(", ")
        ))
    })?;
    if opts.gpus == 0 || opts.gpus > driver_files::MAX_GPUS {
        return Err(SimError::Usage(format!(
            "--gpus must be 1..={}",
            driver_files::MAX_GPUS
        )));
    }
    io(&opts.root, fs::create_dir_all(&opts.root))?;
    let root = io(&opts.root, fs::canonicalize(&opts.root))?;
    let lib = match &opts.lib {
        Some(l) => l.clone(),
        None => default_lib()?,
    };
    if !lib.is_file() {
        return Err(SimError::Usage(format!(
            "simulated library {} not found (build gpushare-sim, or pass --lib)",
            lib.display()
        )));
    }
    let store = Store::for_root(&root);
    let mut reused_state = false;
    let state = if store.exists() && !opts.force {
        let old = store.load()?;
        let same = old.gpus.len() == opts.gpus as usize
            && old
                .gpus
                .iter()
                .all(|g| g.model == model.key && g.mig_enabled() == opts.mig)
            && old.latency == opts.latency
            && old.driver_root == root;
        if !same {
            return Err(SimError::Usage(format!(
                "{} already holds a different simulated node (use --force to replace it)",
                store.state_path().display()
            )));
        }
        reused_state = true;
        old
    } else {
        let mut gpus = Vec::new();
        for i in 0..opts.gpus {
            gpus.push(Gpu {
                index: i,
                minor: i,
                uuid: format!("GPU-{}", random_uuid()?),
                model: model.key.clone(),
                mig_current: u32::from(opts.mig),
                mig_pending: u32::from(opts.mig),
                compute_mode: model.compute_mode.unwrap_or(0),
                gpu_instances: vec![],
            });
        }
        let st = State {
            version: STATE_VERSION,
            driver_root: root.clone(),
            latency: opts.latency,
            next_serial: 1,
            gpus,
            processes: vec![],
        };
        if opts.force {
            // Leftover capability files of the old node's instances.
            let caps = root.join("proc/driver/nvidia/capabilities");
            if caps.exists() {
                io(&caps, fs::remove_dir_all(&caps))?;
            }
        }
        store.create(&st, opts.force)?;
        st
    };
    install(&lib, &root.join(LIB_REL))?;
    let fallback_nodes = driver_files::lay_out(&state)?;
    let state_dir = root.join(STATE_DIR_REL);
    io(
        &state_dir,
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir),
    )?;
    io(
        &state_dir,
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)),
    )?;
    let config = format!(
        "nvml_library = {}\ndriver_root = {}\nstate_dir = {}\n",
        toml_str(&root.join(LIB_REL)),
        toml_str(&root),
        toml_str(&state_dir)
    );
    let cfg = root.join("config.toml");
    io(&cfg, fs::write(&cfg, config))?;
    Ok(InitReport {
        root,
        reused_state,
        fallback_nodes,
    })
}

fn store_for(root: &Path) -> SimResult<Store> {
    let store = Store::for_root(root);
    if !store.exists() {
        return Err(SimError::NoState(store.state_path().display().to_string()));
    }
    Ok(store)
}

/// `gpushare-sim show`: the state.
pub fn show(root: &Path) -> SimResult<State> {
    store_for(root)?.load()
}

/// `gpushare-sim mig`, as `nvidia-smi -i N -mig 0|1`: the activation status, SUCCESS when the
/// mode is current, otherwise why it is pending (the model needs a GPU reset).
pub fn set_mig(root: &Path, gpu: u32, on: bool) -> SimResult<Ret> {
    store_for(root)?.transact(|st| {
        if st.gpu(gpu).is_none() {
            return Err(SimError::Usage(format!("no GPU {gpu}")));
        }
        mig::set_mig_mode(st, gpu, on).map_err(|e| match e {
            SimError::Nvml(IN_USE) => SimError::Usage(format!(
                "GPU {gpu} is in use (GPU instances or processes exist): NVML_ERROR_IN_USE"
            )),
            e => e,
        })
    })
}

/// `gpushare-sim reset`, the stand-in for `nvidia-smi -i N -r`: instances are gone and a
/// pending MIG mode becomes current; refused while a process holds the GPU.
pub fn reset_gpu(root: &Path, gpu: u32) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        let g = st
            .gpu(gpu)
            .ok_or_else(|| SimError::Usage(format!("no GPU {gpu}")))?;
        let n = mig::processes_on_gpu(st, g);
        mig::reset_gpu(st, gpu).map_err(|e| match e {
            SimError::Nvml(IN_USE) => SimError::Usage(format!(
                "GPU {gpu} is in use by {n} process(es): not reset (NVML_ERROR_IN_USE)"
            )),
            e => e,
        })
    })
}

/// `gpushare-sim compute-mode`: what `nvidia-smi -i N -c MODE` does.
pub fn set_compute_mode(root: &Path, gpu: u32, mode: u32) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        if st.gpu(gpu).is_none() {
            return Err(SimError::Usage(format!("no GPU {gpu}")));
        }
        crate::compute_mode::set(st, gpu, mode).map_err(|e| match e {
            SimError::Nvml(crate::error::NOT_SUPPORTED) => SimError::Usage(format!(
                "GPU {gpu}: setting the compute mode is not supported (MIG enabled, or the model has none)"
            )),
            e => e,
        })
    })
}

/// `gpushare-sim latency`
pub fn set_latency(root: &Path, latency: Latency) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        st.latency = latency;
        Ok(())
    })
}

/// `gpushare-sim process add`
pub fn add_process(root: &Path, uuid: &str, pid: u32, used_memory: u64) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        let known = st.gpus.iter().any(|g| g.uuid == uuid) || st.find_mig(uuid).is_some();
        if !known {
            return Err(SimError::Usage(format!("no GPU or MIG device {uuid}")));
        }
        if let Some(g) = st.gpus.iter().find(|g| g.uuid == uuid) {
            crate::compute_mode::may_open_context(st, g, pid).map_err(SimError::Usage)?;
        }
        st.processes.retain(|p| !(p.pid == pid && p.uuid == uuid));
        st.processes.push(Process {
            pid,
            uuid: uuid.to_string(),
            used_memory,
        });
        Ok(())
    })
}

/// `gpushare-sim process remove`
pub fn remove_process(root: &Path, uuid: &str, pid: u32) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        let before = st.processes.len();
        st.processes.retain(|p| !(p.pid == pid && p.uuid == uuid));
        if st.processes.len() == before {
            return Err(SimError::Usage(format!("no process {pid} on {uuid}")));
        }
        Ok(())
    })
}

/// What `create-instance` made.
#[derive(Debug, serde::Serialize)]
pub struct Created {
    pub gpu: u32,
    pub gpu_uuid: String,
    pub profile: String,
    pub profile_id: u32,
    pub gi: u32,
    pub ci: u32,
    pub start: u32,
    pub size: u32,
    pub mig_uuid: String,
}

/// `gpushare-sim create-instance`: a GPU instance and its full compute instance, as another
/// MIG manager would make them.
pub fn create_instance(
    root: &Path,
    gpu: u32,
    profile: &str,
    start: Option<u32>,
) -> SimResult<Created> {
    store_for(root)?.transact(|st| {
        let g = st
            .gpu(gpu)
            .ok_or_else(|| SimError::Usage(format!("no GPU {gpu}")))?;
        let model = mig::model_of(g)?;
        let p = model.gi_profile_by_name(profile).ok_or_else(|| {
            let names: Vec<_> = model
                .gi_profiles()
                .map(|p| p.short_name().to_string())
                .collect();
            SimError::Usage(format!(
                "model {} has no profile {profile:?} (has: {})",
                model.key,
                names.join(", ")
            ))
        })?;
        let placement = match start {
            None => None,
            Some(s) => Some(
                p.placements
                    .iter()
                    .copied()
                    .find(|pl| pl.0 == s)
                    .ok_or_else(|| {
                        SimError::Usage(format!("{} cannot start at slot {s}", p.short_name()))
                    })?,
            ),
        };
        let (profile_id, short, slices) = (p.id, p.short_name().to_string(), p.slice_count);
        let ci_profile = mig::ci_profile_index_for_slices(slices)
            .ok_or_else(|| SimError::Usage(format!("no compute-instance profile for {short}")))?;
        let (gi, _) = mig::create_gi(st, gpu, profile_id, placement)?;
        let (ci, _) = mig::create_ci(st, gpu, gi, ci_profile, None)?;
        let g = &st.gpus[gpu as usize];
        let gi_rec = g
            .gi(gi)
            .ok_or_else(|| SimError::Io("instance vanished".into()))?;
        Ok(Created {
            gpu,
            gpu_uuid: g.uuid.clone(),
            profile: short,
            profile_id,
            gi,
            ci,
            start: gi_rec.start,
            size: gi_rec.size,
            mig_uuid: gi_rec.compute_instances[0].uuid.clone(),
        })
    })
}

/// `gpushare-sim destroy-instance`: a GPU instance and all its compute instances.
pub fn destroy_instance(root: &Path, gpu: u32, gi: u32) -> SimResult<()> {
    store_for(root)?.transact(|st| {
        let g = st
            .gpu(gpu)
            .ok_or_else(|| SimError::Usage(format!("no GPU {gpu}")))?;
        let rec = g
            .gi(gi)
            .ok_or_else(|| SimError::Usage(format!("no GPU instance {gi} on GPU {gpu}")))?;
        let cis: Vec<u32> = rec.compute_instances.iter().map(|c| c.id).collect();
        for ci in cis {
            mig::destroy_ci(st, gpu, gi, ci)?;
        }
        mig::destroy_gi(st, gpu, gi)
    })
}
