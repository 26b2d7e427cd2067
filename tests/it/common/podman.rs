//! Rootful Podman on private storage, run and tmp roots (there is no daemon), for the host's
//! Podman (tests/it/engine_podman.rs) and trixie's (tests/it/trixie_podman.rs): the same command
//! line either way, only where `podman` runs and how gpushare finds the node's config differ.

use super::engines::*;
use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// `--runtime gpushare` (packaging/podman/containers.conf).
    Runtime,
    /// The default runtime with gpushare's hooks.d files.
    Hooks,
    /// `--runtime gpushare` and the hooks.d files.
    Both,
    /// `--runtime runc`, no gpushare at all.
    PlainRunc,
    /// The default runtime (crun where installed), no gpushare at all.
    PlainDefault,
}

/// Rootful Podman's default limits are more than this sandbox allows.
const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

pub struct Podman {
    host: Host,
    pub image: String,
    /// `--runtime-flag` for `--runtime gpushare` (how a config that is not the installed one
    /// reaches gpushare), if any.
    runtime_flag: Option<String>,
}

impl Podman {
    /// Podman on `host` with the shipped containers.conf, an empty hooks directory, and the
    /// busybox image. The hooks.d files go under [`Podman::dir`]`/hooks`, the caller's to write.
    pub fn on(host: Host, containers_conf: String, runtime_flag: Option<String>) -> Podman {
        let pm = Podman {
            host,
            image: "localhost/gpushare-test/busybox:1".into(),
            runtime_flag,
        };
        let d = pm.dir();
        std::fs::write(d.join("containers.conf"), containers_conf).unwrap();
        std::fs::create_dir_all(d.join("hooks")).unwrap();
        std::fs::create_dir_all(d.join("no-hooks")).unwrap();
        pm
    }

    /// Import the busybox image (once the hooks are in place).
    pub fn import_busybox(&self) {
        let tar = busybox_tar(self.dir());
        let out = self.podman(false, &["import", tar.to_str().unwrap(), &self.image]);
        assert!(out.status.success(), "podman import: {}", text(&out.stderr));
    }

    /// The scratch directory, at the same path wherever `podman` runs.
    pub fn dir(&self) -> &Path {
        self.host.dir()
    }

    /// `podman` on this test's private roots; `hooks` picks the shipped hooks.d files or none.
    pub fn cmd(&self, hooks: bool) -> Command {
        let d = self.dir();
        let mut c = self.host.cmd("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--hooks-dir")
            .arg(d.join(if hooks { "hooks" } else { "no-hooks" }));
        c
    }

    pub fn podman(&self, hooks: bool, args: &[&str]) -> Output {
        run(self.cmd(hooks).args(args))
    }

    fn runtime_args(&self, via: Via) -> Vec<&str> {
        match via {
            Via::Runtime | Via::Both => {
                let mut args = vec!["--runtime", "gpushare"];
                if let Some(flag) = &self.runtime_flag {
                    args.extend_from_slice(&["--runtime-flag", flag]);
                }
                args
            }
            Via::PlainRunc => vec!["--runtime", "runc"],
            Via::Hooks | Via::PlainDefault => vec![],
        }
    }

    /// `podman [--runtime R] run --rm --network none <opts> IMAGE sh -c SCRIPT`.
    pub fn run(&self, via: Via, opts: &[&str], script: &str) -> Output {
        let mut args = self.runtime_args(via);
        args.extend_from_slice(&["run", "--rm", "--network", "none"]);
        args.extend_from_slice(&LIMITS);
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", script]);
        self.podman(matches!(via, Via::Hooks | Via::Both), &args)
    }

    /// `podman [--runtime R] run -d --name NAME ... sleep 600`: a container that holds its grant.
    pub fn detach(&self, via: Via, name: &str, opts: &[&str]) -> Output {
        let mut args = self.runtime_args(via);
        args.extend_from_slice(&["run", "-d", "--name", name, "--network", "none"]);
        args.extend_from_slice(&LIMITS);
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sleep", "600"]);
        self.podman(matches!(via, Via::Hooks | Via::Both), &args)
    }

    /// `podman rm --force --time 0 NAME`, which must succeed.
    pub fn remove(&self, hooks: bool, name: &str) {
        let out = self.podman(hooks, &["rm", "--force", "--time", "0", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // A failed test can leave containers (and their conmon) behind: remove them while the
        // roots (and the namespace they live in) are still there; the host goes after this.
        let _ = self.cmd(true).args(["rm", "--all", "--force"]).output();
    }
}

/// A 1g.10gb asked for by annotation: the container sees its slice, which is free again once
/// `podman run --rm` returns. Returns the slice's MIG UUID.
pub fn assert_annotation_sees_its_slice_and_frees_it(
    node: &SimNode,
    pm: &Podman,
    via: Via,
) -> String {
    let out = pm.run(via, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "podman run --annotation: {}\n{printed}",
        text(&out.stderr)
    );
    let mig = assert_sees_one_slice(node, &printed);
    assert_all_free(node, Some(&mig));
    mig
}

/// While a hooks-only container runs, the precreate grant is leased to the container's id: the
/// createRuntime hook precreate added moved it there from the claim its spec carries
/// (`gpushare.lease`, which `podman inspect` shows).
pub fn assert_hooks_only_lease_is_held_while_running(node: &SimNode, pm: &Podman) {
    let name = unique("held");
    let out = pm.detach(Via::Hooks, &name, &["--annotation", "gpu.profile=2g.20gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let leases = leases(node);
    assert_eq!(leases.len(), 1, "{:?}", node.ledger());
    assert_eq!(leases[0].0, "2g.20gb");
    let out = pm.podman(true, &["inspect", "--format", "{{.Id}}", &name]);
    assert_eq!(
        text(&out.stdout).trim(),
        leases[0].1,
        "{}",
        text(&out.stderr)
    );
    let out = pm.podman(
        true,
        &[
            "inspect",
            "--format",
            "{{index .Config.Annotations \"gpushare.lease\"}}",
            &name,
        ],
    );
    assert!(
        text(&out.stdout).trim().starts_with("precreate-"),
        "the claim stays in the spec: {}",
        text(&out.stderr)
    );
    pm.remove(true, &name);
    assert_all_free(node, None);
}

/// Hooks and `--runtime gpushare` together: precreate grants, the wrapper sees a spec that is
/// already granted and takes nothing more; the lease ends under the container's id.
pub fn assert_hooks_and_runtime_together_grant_once(node: &SimNode, pm: &Podman) {
    let name = unique("both");
    let out = pm.detach(Via::Both, &name, &["--annotation", "gpu.profile=1g.10gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ledger = node.ledger();
    let leases: Vec<String> = ledger
        .instances
        .iter()
        .filter_map(|r| r.lease.as_ref().map(|l| l.container_id.clone()))
        .collect();
    assert_eq!(ledger.instances.len(), 1, "{ledger:?}");
    assert_eq!(leases.len(), 1, "{ledger:?}");
    // Moved from the precreate claim to the container's id by the createRuntime hook.
    let out = pm.podman(true, &["inspect", "--format", "{{.Id}}", &name]);
    assert_eq!(leases[0], text(&out.stdout).trim(), "{leases:?}");
    pm.remove(true, &name);
    assert_all_free(node, None);
}

/// Without a request, gpushare in front of runc prints what runc alone prints, and the hooks
/// with the default runtime what the default runtime alone prints; nothing is made.
pub fn assert_no_request_is_exactly_plain_runtime(node: &SimNode, pm: &Podman) {
    let opts = ["--hostname", "same", "-e", "X=1"];
    for (via, plain) in [
        (Via::Runtime, Via::PlainRunc),
        (Via::Hooks, Via::PlainDefault),
    ] {
        let want = pm.run(plain, &opts, SHOW_ALL);
        assert_eq!(
            want.status.code(),
            Some(3),
            "{plain:?}: {}",
            text(&want.stderr)
        );
        assert!(!text(&want.stdout).contains("nvidia"));
        let out = pm.run(via, &opts, SHOW_ALL);
        assert_eq!(out.status.code(), Some(3), "{via:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), text(&want.stdout), "{via:?}");
    }
    assert_nothing_made(node);
}
