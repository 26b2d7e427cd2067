#!/usr/bin/env bash
# Install gpushare: its three binaries, the default /etc/gpushare/config.toml (an existing one
# is kept), the Podman hooks, and each container engine's configuration. Nothing is restarted
# unless --restart is given; an engine config that already exists and is not ours is never
# edited: the lines to add are printed instead.
#
#   packaging/install.sh                       # binaries from target/release, engines found on PATH
#   packaging/install.sh --engines docker,containerd --restart
#   packaging/install.sh --print               # show every engine's config, write none
#   packaging/install.sh --destdir /tmp/stage --no-engines   # staging (used by build-deb)
set -euo pipefail

# Resolved: the package runs this script through the /usr/bin/gpushare-install symlink.
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
repo="$(cd "$here/.." && pwd)"
destdir=""
prefix="/usr"
bin_dir=""
engines="auto"
print_only=0
restart=0

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --bin-dir DIR     where the built gpushare, gpushare-runtime, gpushare-hook, gpusharectl are (default: target/release)
  --prefix DIR      install prefix (default: /usr; binaries go to PREFIX/bin)
  --destdir DIR     stage everything below DIR instead of / (packaging)
  --engines LIST    comma-separated: docker,podman,containerd,crio,kubernetes, all, or auto (default:
                    those whose command is installed)
  --no-engines      install binaries, config and hooks only
  --print           print each engine's config instead of writing it
  --restart         restart the engines whose config was written (systemctl)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --destdir) destdir="${2%/}"; shift 2 ;;
    --engines) engines="$2"; shift 2 ;;
    --no-engines) engines=""; shift ;;
    --print) print_only=1; shift ;;
    --restart) restart=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

bindir="$prefix/bin"
skip_bins=0
if [ -z "$bin_dir" ]; then
  bin_dir="$repo/target/release"
  # Run from the installed package: the binaries are in place already.
  [ -x "$bin_dir/gpushare" ] || { [ -x "$destdir$bindir/gpushare" ] && skip_bins=1; }
fi
share="$prefix/share/gpushare"
# Podman reads hooks from here by default (besides /etc/containers/oci/hooks.d).
hooksdir="$prefix/share/containers/oci/hooks.d"

say() { echo "gpushare install: $*"; }

# Engine configs name the installed binaries: replace the packaged /usr/bin paths.
render() {
  sed -e "s#/usr/bin/gpushare-hook#$bindir/gpushare-hook#g" \
      -e "s#/usr/bin/gpushare\"#$bindir/gpushare\"#g" "$here/$1"
}

# Write $2 (rendered from packaging/$1) unless it exists with other content.
put() {
  local src="$1" dst="$destdir$2" mode="${3:-0644}"
  if [ "$print_only" = 1 ]; then
    echo "----- $2"
    render "$src"
    return 0
  fi
  if [ -e "$dst" ] && ! render "$src" | cmp -s - "$dst"; then
    say "$2 exists and differs: left as it is; gpushare's version:"
    render "$src" | sed 's/^/    /'
    return 1
  fi
  install -d "$(dirname "$dst")"
  render "$src" > "$dst.tmp.$$"
  chmod "$mode" "$dst.tmp.$$"
  mv -f "$dst.tmp.$$" "$dst"
  say "wrote $2"
}

# --- binaries, default config, hooks, reference files
if [ "$print_only" = 0 ] && [ "$skip_bins" = 0 ]; then
  for b in gpushare gpushare-runtime gpushare-hook gpusharectl; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b is missing: cargo build --release first" >&2; exit 1; }
  done
  install -d "$destdir$bindir"
  for b in gpushare gpushare-runtime gpushare-hook gpusharectl; do
    install -m 0755 "$bin_dir/$b" "$destdir$bindir/$b"
  done
  say "installed gpushare, gpushare-runtime, gpushare-hook, gpusharectl in $bindir"
fi
if [ "$print_only" = 0 ]; then
  if [ -e "$destdir/etc/gpushare/config.toml" ]; then
    say "/etc/gpushare/config.toml exists: kept"
  else
    install -d -m 0755 "$destdir/etc/gpushare"
    install -m 0644 "$here/config.toml" "$destdir/etc/gpushare/config.toml"
    say "wrote /etc/gpushare/config.toml"
  fi
  put podman/hooks.d/gpushare-precreate.json "$hooksdir/gpushare-precreate.json" || true
  put podman/hooks.d/gpushare-poststop.json "$hooksdir/gpushare-poststop.json" || true
  if [ "$here" != "$destdir$share" ]; then
    install -d "$destdir$share"
    cp -R "$here/docker" "$here/podman" "$here/containerd" "$here/crio" "$here/kubernetes" \
      "$here/compose.yaml" \
      "$here/config.toml" "$destdir$share/"
    say "reference configs in $share"
  fi
fi

# --- engines
has() { command -v "$1" >/dev/null 2>&1; }
if [ "$engines" = auto ]; then
  engines=""
  has dockerd && engines="$engines,docker"
  has podman && engines="$engines,podman"
  has containerd && engines="$engines,containerd"
  has crio && engines="$engines,crio"
  has kubectl && engines="$engines,kubernetes"
fi
[ "$engines" = all ] && engines="docker,podman,containerd,crio,kubernetes"

restart_list=()
for e in ${engines//,/ }; do
  case "$e" in
    docker)
      if put docker/daemon.json /etc/docker/daemon.json; then
        restart_list+=(docker)
      else
        say "docker: add the \"gpushare\" entry above to \"runtimes\" in /etc/docker/daemon.json, then restart dockerd"
      fi ;;
    podman)
      # Podman reads its config on every command: nothing to restart.
      put podman/containers.conf /etc/containers/containers.conf.d/50-gpushare.conf || true ;;
    containerd)
      ver=3
      if has containerd && containerd --version 2>/dev/null | grep -Eq ' v?1\.'; then ver=2; fi
      if put "containerd/gpushare-v$ver.toml" /etc/containerd/conf.d/gpushare.toml; then
        restart_list+=(containerd)
      fi
      main="$destdir/etc/containerd/config.toml"
      if [ "$print_only" = 1 ]; then
        echo "# /etc/containerd/config.toml must import it: imports = [\"/etc/containerd/conf.d/*.toml\"]"
      elif [ ! -e "$main" ]; then
        printf 'version = %s\nimports = ["/etc/containerd/conf.d/*.toml"]\n' "$ver" > "$main"
        say "wrote /etc/containerd/config.toml (defaults + imports)"
      elif ! grep -q 'conf.d' "$main"; then
        say "containerd: add  imports = [\"/etc/containerd/conf.d/*.toml\"]  at the top of /etc/containerd/config.toml"
      fi
      # containerd 1.x replaces config.toml's whole CRI section with an imported one.
      if [ "$ver" = 2 ] && [ -e "$main" ] && grep -q 'io.containerd.grpc.v1.cri"' "$main"; then
        say "containerd 1.x: /etc/containerd/config.toml configures the CRI plugin, and an import replaces that whole section: move its CRI settings into /etc/containerd/conf.d/gpushare.toml, or paste the gpushare tables into config.toml instead of importing (docs/engines.md, CRI)"
      fi ;;
    crio)
      put crio/50-gpushare.conf /etc/crio/crio.conf.d/50-gpushare.conf && restart_list+=(crio) || true ;;
    kubernetes)
      say "kubernetes: kubectl apply -f $share/kubernetes/runtimeclass.yaml (example pod: $share/kubernetes/example-pod.yaml); DRA (1.34+): $share/kubernetes/dra/ (docs/kubernetes.md)" ;;
    "") ;;
    *) echo "install.sh: unknown engine $e" >&2; exit 2 ;;
  esac
done

if [ "${#restart_list[@]}" -gt 0 ]; then
  if [ "$restart" = 1 ] && [ -z "$destdir" ] && [ "$print_only" = 0 ]; then
    for s in "${restart_list[@]}"; do
      say "restarting $s"
      systemctl restart "$s"
    done
  elif [ "$print_only" = 0 ]; then
    say "restart to apply: ${restart_list[*]} (or run again with --restart)"
  fi
fi
