//! A Debian trixie root with today's engines (Docker 26, Compose 2, Podman 5, containerd 1.7),
//! made and cached by scripts/trixie-root, entered through a private mount namespace.
//!
//! Each [`Trixie`] is one mount namespace: a fresh overlay on the cached root (tests never
//! write to the cache; being a mount point, it can be the `pivot_root` target, and Docker's
//! `import` needs `/` to be one), with gpushare's binaries at their installed paths (/usr/bin), the node's config at /etc/gpushare/config.toml, and the node and
//! the test's scratch directory at the same paths as outside, so what the test reads outside
//! (ledger, status) is what the engines wrote inside. `pivot_root`, not `chroot`: runc/crun
//! `exec` setns into the container's mount namespace and then resolve paths from that
//! namespace's root, which under chroot is still the host's. Every command runs through
//! `nsenter --mount` into that namespace; it goes away, mounts and all, with its last process.

use super::engines::{Daemon, ShortDir};
use super::*;
use std::sync::OnceLock;

/// The cached root (made on first use; concurrent test processes wait for one build).
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/trixie-root");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/trixie-root failed (its message is above)"
        );
        PathBuf::from(text(&out.stdout).trim())
    })
}

/// Run by the namespace's first process: overlay, kernel filesystems, binds, pivot_root.
/// Arguments: the cached root, the scratch directory, then `SOURCE=TARGET` binds.
const ENTER: &str = r#"
set -eu
lower=$1 dir=$2
shift 2
new=$dir/merged
mkdir -p "$dir/upper" "$dir/work" "$new"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$new"
mount -t proc proc "$new/proc"
mount --rbind /sys "$new/sys"
mount --rbind /dev "$new/dev"
mount -t tmpfs -o mode=755 tmpfs "$new/run"
mount -t tmpfs -o mode=1777 tmpfs "$new/tmp"
for b in "$@"; do
  src=${b%%=*} dst=$new${b#*=}
  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "${dst%/*}"; touch "$dst"; fi
  mount --bind "$src" "$dst"
done
mkdir -p "$new/mnt/host"
cd "$new"
pivot_root . mnt/host
umount -l /mnt/host
cd /
touch "$dir/entered"
exec sleep infinity
"#;

/// One private mount namespace on the trixie root; see the module doc.
pub struct Trixie {
    // Dropped first: the namespace's holder goes before its scratch directory.
    holder: Daemon,
    dir: ShortDir,
}

impl Trixie {
    /// Enter a fresh namespace for `node`. Engines' own state belongs under [`Trixie::dir`].
    pub fn enter(node: &SimNode) -> Trixie {
        Trixie::enter_sharing(node, &[])
    }

    /// The same, with `shared` directories also seen at their own paths inside.
    pub fn enter_sharing(node: &SimNode, shared: &[&Path]) -> Trixie {
        Trixie::enter_binding(node, shared, &[])
    }

    /// [`Trixie::enter_sharing`], with each `(outside, inside)` of `extra` also seen inside at
    /// another path (where an engine looks by default).
    pub fn enter_binding(node: &SimNode, shared: &[&Path], extra: &[(&Path, &str)]) -> Trixie {
        require_root();
        let root = root();
        let dir = ShortDir::new("gs-tx");
        let d = dir.path().to_path_buf();
        let mut binds = vec![
            format!("{}={}", node.root().display(), node.root().display()),
            format!("{}=/etc/gpushare/config.toml", node.config().display()),
            format!("{}={}", d.display(), d.display()),
        ];
        for p in shared {
            binds.push(format!("{}={}", p.display(), p.display()));
        }
        for (outside, inside) in extra {
            binds.push(format!("{}={inside}", outside.display()));
        }
        for (bin, name) in [
            (ENTRY, "gpushare"),
            (FULL, "gpushare-runtime"),
            (HOOK, "gpushare-hook"),
            (CTL, "gpusharectl"),
        ] {
            binds.push(format!("{bin}=/usr/bin/{name}"));
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            ENTER,
            "sh",
        ])
        .arg(root)
        .arg(&d)
        .args(&binds);
        // unshare and sh exec in place: the child is the holder, its pid the namespace's.
        let mut holder = Daemon::start(
            "trixie namespace",
            cmd,
            d.join("holder.pid"),
            d.join("holder.log"),
            true,
        );
        let entered = d.join("entered");
        holder.wait_ready("entered", || entered.exists());
        Trixie { holder, dir }
    }

    /// A scratch directory seen at the same path inside and outside.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where `inside` (an absolute path in the namespace) is seen from outside it.
    pub fn outside(&self, inside: &Path) -> PathBuf {
        let pid = std::fs::read_to_string(&self.holder.pid_file).unwrap();
        Path::new("/proc")
            .join(pid.trim())
            .join("root")
            .join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// `program` run inside the namespace (resolved in the trixie root's PATH).
    pub fn cmd(&self, program: &str) -> Command {
        let pid = std::fs::read_to_string(&self.holder.pid_file).unwrap();
        let mut c = Command::new("nsenter");
        c.args(["--target", pid.trim(), "--mount", "--", program]);
        c
    }

    /// `program args` inside the namespace, to its end.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run(self.cmd(program).args(args))
    }
}
