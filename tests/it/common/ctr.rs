//! A privately started containerd driven by `ctr run --runc-binary gpushare`, for the host's
//! containerd (tests/it/engine_containerd.rs) and trixie's (tests/it/trixie_containerd.rs), and the
//! check of the shipped CRI runtime entry as containerd's own loader reads it.

use super::engines::*;
use super::*;

pub struct Containerd {
    // Dropped first: the daemon stops before its directories (and namespace) go.
    pub daemon: Daemon,
    sock: PathBuf,
    namespace: String,
    pub rootfs: PathBuf,
    host: Host,
}

impl Containerd {
    /// containerd on `host` with the CRI plugin off; on this machine the node's config
    /// reaches gpushare through containerd's environment, in trixie gpushare reads the
    /// installed one.
    pub fn start(node: &SimNode, host: Host) -> Containerd {
        let d = host.dir().to_path_buf();
        let sock = d.join("c.sock");
        // The CRI plugin is off: ctr does not need it, and it would only slow the start.
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            sock.display().to_string(),
            format!("{}.ttrpc", sock.display()),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let daemon = spawn_containerd(host.trixie(), &d, &sock, &node.config());
        let rootfs = busybox_rootfs(&d);
        Containerd {
            daemon,
            sock,
            // The shim keeps runc state under /run/containerd/runc/<namespace>: a namespace of
            // our own keeps it apart from any system containerd's.
            namespace: unique("gpushare-test"),
            rootfs,
            host,
        }
    }

    /// gpushare as this host has it installed.
    pub fn shim(&self) -> &'static str {
        match self.host {
            Host::Here(_) => ENTRY,
            Host::Trixie(_) => "/usr/bin/gpushare",
        }
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(self
            .host
            .cmd("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(args))
    }

    /// `ctr run --rm --rootfs [--runc-binary gpushare] <opts> ROOTFS ID sh -c SCRIPT`, with
    /// what the container printed on stdout as the output's stdout.
    ///
    /// The container's stdout goes to a file in its rootfs, not through ctr: the containerd
    /// 1.6 client closes a task's output FIFOs before draining them when it deletes the task
    /// (containerd PR 5974; PR 8643 undid it later), so on a loaded machine `ctr run --rm`
    /// drops whatever it had not copied yet when the container exited, with exit status 0.
    pub fn run(&self, gpushare: bool, opts: &[&str], script: &str) -> Output {
        let id = unique("c");
        let out_name = format!("stdout-{id}");
        let script = format!("exec >/{out_name}\n{script}");
        let mut args = vec!["run", "--rm", "--rootfs"];
        if gpushare {
            args.extend_from_slice(&["--runc-binary", self.shim()]);
        }
        args.extend_from_slice(opts);
        let rootfs = self.rootfs.display().to_string();
        args.extend_from_slice(&[&rootfs, &id, "/bin/sh", "-c", &script]);
        let mut out = self.ctr(&args);
        let file = self.rootfs.join(&out_name);
        // Absent when the container never started (a refused create).
        if let Ok(printed) = std::fs::read(&file) {
            out.stdout.extend(printed);
            std::fs::remove_file(&file).unwrap();
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers a failed test left: their tasks first, then the containers.
        let list = self.ctr(&["containers", "list", "--quiet"]);
        for id in text(&list.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        // The shim's runc root for our namespace (empty once every container is gone); in
        // trixie's namespace /run goes with it.
        if let Host::Here(_) = self.host {
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        }
    }
}

/// A 1g.10gb asked for by annotation: the container sees its slice, which is free again once
/// `ctr run --rm` returns. Returns the slice's MIG UUID.
pub fn assert_annotation_sees_its_slice_and_frees_it(node: &SimNode, ctd: &Containerd) -> String {
    let out = ctd.run(true, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run: {}\n{printed}\n{}",
        text(&out.stderr),
        ctd.daemon.log_text()
    );
    let mig = assert_sees_one_slice(node, &printed);
    assert_all_free(node, Some(&mig));
    mig
}

/// A bad request: `ctr run` shows gpushare's own message after containerd's `prefix`.
pub fn assert_bad_request_shows_gpushare_message(ctd: &Containerd, prefix: &str) {
    let out = ctd.run(true, &["--annotation", "gpu.profile=0g.1gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(prefix)
            && err.contains("gpu.profile")
            && err.contains("0g.1gb")
            && err.contains("accepted"),
        "ctr must show gpushare's own message: {err}"
    );
}

/// A request-less container through gpushare prints exactly what one through runc alone
/// prints, and nothing is made.
pub fn assert_no_request_is_exactly_plain_runc(node: &SimNode, ctd: &Containerd) {
    let opts = ["--env", "X=1", "--annotation", "unrelated=1"];
    let plain = ctd.run(false, &opts, SHOW_ALL);
    let ours = ctd.run(true, &opts, SHOW_ALL);
    assert_eq!(plain.status.code(), Some(3), "{}", text(&plain.stderr));
    assert_eq!(ours.status.code(), Some(3), "{}", text(&ours.stderr));
    assert_eq!(text(&ours.stdout), text(&plain.stdout));
    assert!(!text(&ours.stdout).contains("nvidia"));
    assert_nothing_made(node);
}

/// A main containerd config in `d` that imports `drop_in` by a glob, laid out as
/// packaging/install.sh lays it out; returns the main config's path.
pub fn config_importing(d: &Path, drop_in: &str) -> PathBuf {
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::write(d.join("conf.d/gpushare.toml"), drop_in).unwrap();
    let main = format!(
        "version = 2\nroot = {:?}\nstate = {:?}\nimports = [{:?}]\n",
        d.join("root").display().to_string(),
        d.join("state").display().to_string(),
        format!("{}/conf.d/*.toml", d.display()),
    );
    std::fs::write(d.join("config.toml"), main).unwrap();
    d.join("config.toml")
}

/// `containerd config dump` holds gpushare's CRI runtime, runc.v2 with `binary` and the
/// `gpu.*` annotations passed.
pub fn assert_dump_has_gpushare_runtime(out: &Output, binary: &str) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = text(&out.stdout);
    let section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpushare]")
        .nth(1)
        .unwrap_or_else(|| panic!("no gpushare runtime in:\n{dump}"));
    // Up to the next runtime table that is not gpushare's own (its .options follows it).
    let section: String = section
        .lines()
        .take_while(|l| {
            let l = l.trim_start();
            !l.starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc")
                && !l.starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "runtime_type = \"io.containerd.runc.v2\"",
        "pod_annotations = [\"gpu.*\"]",
        "container_annotations = [\"gpu.*\"]",
        &format!("BinaryName = \"{binary}\""),
    ] {
        assert!(section.contains(want), "{want} missing in:\n{section}");
    }
}
