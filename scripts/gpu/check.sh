#!/usr/bin/env bash
# gpushare on a real NVIDIA GPU (MIG disabled, settings never changed). Runs as root on the GPU
# machine, from the repository root, with:
#   $GPUSHARE_BIN   folder holding gpushare, gpushare-runtime, gpushare-hook, gpusharectl, gpushare-sim and
#                   libgpushare_sim.so built on the build machine (x86-64)
#   $RUNC_DEB       Debian's runc .deb (unpacked here with dpkg -x, not installed)
#   $OUT            where results go (gpu-results.md, status-real.json, ...)
# It proves: no request -> no GPU; gpu.share=timeslice -> the whole GPU; two concurrent MPS
# shares of 25% / 4G -> ~a quarter of the SMs each, 6 GiB allocations fail, kernels overlap,
# the daemon gone afterwards; gpu.profile on a MIG-disabled GPU -> a clear refusal naming
# mig.manage_mode (left off here), which status and doctor report too; NVML's
# MIG profile table equal to the simulator's model of the same GPU (sim/models); and what
# hostile MPS tenants get (env dropped, share raised, pipe folder redirected) in the compute
# mode the GPU is found in. The config sets mps.exclusive = false: gpushare never calls the
# compute-mode setter here (tests/it/mps_exclusive.rs checks that this config says so).
set -uo pipefail
: "${GPUSHARE_BIN:?}" "${RUNC_DEB:?}" "${OUT:?}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
work=/tmp/gpushare-gpu-check
rm -rf "$work"; mkdir -p "$work"
dpkg -x "$RUNC_DEB" "$work/runc-pkg"
RUNC=$work/runc-pkg/usr/sbin/runc
DRV=/usr/local/nvidia
PY=$(command -v python3)
results=$OUT/gpu-results.md
fails=0
note() { echo "$*" | tee -a "$results"; }
check() { # check NAME CONDITION-RESULT(0/1) DETAIL
  if [ "$2" = 0 ]; then note "- PASS $1: $3"; else note "- FAIL $1: $3"; fails=$((fails+1)); fi
}

cat > "$work/config.toml" <<TOML
runtime = "$RUNC"
state_dir = "$work/state"
nvml_library = "$DRV/lib64/libnvidia-ml.so.1"
driver_root = "/"
hook_path = "$GPUSHARE_BIN/gpushare-hook"
[mps]
control = "$DRV/bin/nvidia-cuda-mps-control"
# The lent GPU's settings are never changed, compute mode included.
exclusive = false
[mig]
# The lent GPU's MIG mode is never changed: gpushare never calls the MIG mode setter here.
manage_mode = false
[inject]
lib_dirs = ["$DRV/lib64"]
bin_dirs = ["$DRV/bin"]
TOML
export GPUSHARE_CONFIG=$work/config.toml

# The host's root, read-only, as every container's rootfs; each gets its own /dev, /proc, /tmp
# (its /sys stays the host's, read-only: a fresh sysfs needs a network namespace of its own).
# Runtimes create mountpoints while a rootfs is still writable (spec root.readonly applies
# after); this rootfs is read-only from the start, so the injection mountpoint must exist.
mkdir -p /usr/local/gpushare
mkdir -p "$work/hostroot"
mount --rbind / "$work/hostroot"
mount -o remount,bind,ro "$work/hostroot" 2>/dev/null || true
trap 'umount -l "$work/hostroot" 2>/dev/null' EXIT

{
  echo "# gpushare on a real GPU — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,mig.mode.current,memory.total --format=csv
  echo "runc: $($RUNC --version | head -1); kernel $(uname -r); $(stat -fc %T /sys/fs/cgroup)"
  echo '```'
  echo
} > "$results"

bundle() { # bundle NAME SCRIPT ANNOTATIONS-JSON
  mkdir -p "$work/$1"
  cat > "$work/$1/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/tmp",
    "args": ["/bin/sh", "-c", $(printf '%s' "$2" | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read()))')],
    "env": ["PATH=$(dirname "$PY"):/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "PYTHONUNBUFFERED=1"]},
  "root": {"path": "$work/hostroot", "readonly": true},
  "hostname": "$1",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777", "size=1g"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
  ],
  "annotations": $3,
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}}
}
JSON
}
G() { "$GPUSHARE_BIN/gpushare" --root "$work/runc" "$@"; }
run_bg() { # create and start NAME; output to $work/NAME/out
  G --log "$work/$1/log.json" --log-format json create --bundle "$work/$1" "$1" > "$work/$1/out" 2>&1 || return 1
  G start "$1" && touch "$work/$1/started"
}
wait_stopped() {
  for _ in $(seq 1 600); do
    [ "$(G state "$1" 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = stopped ] && return 0
    sleep 0.2
  done
  return 1
}
finish() {
  [ -e "$work/$1/started" ] && wait_stopped "$1"
  G delete --force "$1" >/dev/null 2>&1
  { echo "== $1"; cat "$work/$1/out"; } >> "$OUT/containers.out" 2>/dev/null
}

PROBE='import json, time, torch
r = {"available": torch.cuda.is_available()}
if r["available"]:
    p = torch.cuda.get_device_properties(0)
    r["name"], r["sms"] = p.name, p.multi_processor_count
    r["free_gib"] = round(torch.cuda.mem_get_info()[0] / 2**30, 2)
    try:
        x = torch.empty(6 * 2**30, dtype=torch.uint8, device="cuda"); r["alloc_6gib"] = "ok"; del x
    except Exception as e:
        r["alloc_6gib"] = "failed: " + type(e).__name__
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize(); t0 = time.time(); n = 0
    while time.time() - t0 < 4:
        a = (a @ a).clamp_(-1, 1); n += 1
    torch.cuda.synchronize(); r["kernels_from"], r["kernels_to"], r["matmuls"] = t0, time.time(), n
print("RESULT " + json.dumps(r))'
result() { grep -o 'RESULT .*' "$work/$1/out" | head -1 | cut -d' ' -f2-; }
field() { echo "$1" | $PY -c "import json,sys; print(json.load(sys.stdin).get('$2'))" 2>/dev/null; }

# The GPU as the host sees it, outside any container: what the timeslice and MPS checks compare to.
host_sms=$($PY -c 'import torch; print(torch.cuda.get_device_properties(0).multi_processor_count)' 2>/dev/null)
host_sms=${host_sms:-0}

note "## 1. no request"
bundle plain "python3 -c '$PROBE'" '{}'
run_bg plain && finish plain
r=$(result plain)
check "no request sees no GPU" "$([ "$(field "$r" available)" = False ] && echo 0 || echo 1)" "$r"

note "## 2. gpu.share=timeslice"
bundle ts "python3 -c '$PROBE'" '{"gpu.share": "timeslice"}'
run_bg ts && finish ts
r=$(result ts)
check "timeslice sees the whole GPU ($host_sms SMs on the host)" "$([ "$host_sms" -gt 0 ] && [ "$(field "$r" sms)" = "$host_sms" ] && echo 0 || echo 1)" "$r"

note "## 3. two concurrent MPS shares, gpu.mps=25 gpu.mps.memory=4G"
for n in mps-a mps-b; do bundle $n "python3 -c '$PROBE'" '{"gpu.mps": "25", "gpu.mps.memory": "4G"}'; done
run_bg mps-a; run_bg mps-b
"$GPUSHARE_BIN/gpusharectl" status > "$OUT/status-mps.txt" 2>&1
daemon_pid=$(cat "$work"/state/mps/*/pipe/nvidia-cuda-mps-control.pid 2>/dev/null)
finish mps-a; finish mps-b
ra=$(result mps-a); rb=$(result mps-b)
for r in "$ra" "$rb"; do
  sms=$(field "$r" sms)
  check "MPS share sees about a quarter of the SMs" "$([ -n "$sms" ] && [ "$sms" != None ] && [ $((sms * 4)) -ge $((host_sms - 16)) ] && [ $((sms * 4)) -le $((host_sms + 16)) ] && echo 0 || echo 1)" "sms=$sms of $host_sms"
  check "MPS share cannot allocate 6 GiB" "$(field "$r" alloc_6gib | grep -q '^failed' && echo 0 || echo 1)" "$(field "$r" alloc_6gib), free $(field "$r" free_gib) GiB"
done
overlap=$($PY -c "import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(min(a['kernels_to'],b['kernels_to'])-max(a['kernels_from'],b['kernels_from']))" "$ra" "$rb" 2>/dev/null || echo 0)
check "both ran kernels at the same time" "$($PY -c "print(0 if float('$overlap') > 1 else 1)")" "overlap ${overlap}s"
# Gone means no such process or a zombie (an exited daemon its adoptive parent has not reaped),
# no control socket, and no MPS process left at all.
sleep 1
state=$(sed 's/.*) //' "/proc/$daemon_pid/stat" 2>/dev/null | cut -d' ' -f1)
left=$(pgrep -f 'nvidia-cuda-mps-(control|server)' | tr '\n' ' ')
gone=1
if [ -n "$daemon_pid" ] && { [ -z "$state" ] || [ "$state" = Z ]; } && [ -z "$(ls "$work"/state/mps/*/pipe/control 2>/dev/null)" ] && [ -z "$left" ]; then gone=0; fi
check "MPS daemon gone after both were removed" "$gone" "daemon pid ${daemon_pid:-unknown}, state now '${state:-gone}', MPS processes left: '${left}'"

note "## 4. gpu.profile=1g.10gb with MIG disabled"
bundle mig "true" '{"gpu.profile": "1g.10gb"}'
before=$(md5sum < "$work/mig/config.json")
if G create --bundle "$work/mig" mig > "$work/mig/out" 2>&1; then G delete --force mig; ok=1; else ok=0; fi
msg=$(cat "$work/mig/out")
check "MIG request refused, naming MIG mode and the fix" "$([ $ok = 0 ] && echo "$msg" | grep -q 'MIG mode is disabled' && echo "$msg" | grep -q 'mig 1' && echo 0 || echo 1)" "$msg"
check "the refusal names the operator's choice (mig.manage_mode)" "$(echo "$msg" | grep -q 'mig.manage_mode is off' && echo 0 || echo 1)" "$msg"
check "config.json untouched on refusal" "$([ "$before" = "$(md5sum < "$work/mig/config.json")" ] && echo 0 || echo 1)" ""
# The config leaves mig.manage_mode off: status and doctor say what it would take, nothing is switched.
mig_status=$("$GPUSHARE_BIN/gpusharectl" status 2>&1 | grep 'MIG slice:')
check "status says what a MIG slice needs" "$(echo "$mig_status" | grep -q 'needs .* (mig.manage_mode is off)' && echo 0 || echo 1)" "$mig_status"
mig_doctor=$("$GPUSHARE_BIN/gpusharectl" doctor 2>&1 | grep 'GPU 0 mig.manage_mode')
check "doctor says what mig.manage_mode would do" "$(echo "$mig_doctor" | grep -q 'mig.manage_mode is off' && echo 0 || echo 1)" "$mig_doctor"
check "MIG mode unchanged" "$(nvidia-smi -i 0 --query-gpu=mig.mode.current --format=csv,noheader | grep -q Disabled && echo 0 || echo 1)" "$(nvidia-smi -i 0 --query-gpu=mig.mode.current,mig.mode.pending --format=csv,noheader)"

note "## 5. NVML's MIG profile table vs the simulator's model of this GPU"
"$GPUSHARE_BIN/gpusharectl" status --json > "$OUT/status-real.json"
# The simulator's model whose GPU name is the real one's: every model is laid out and asked.
: > "$work/sim-models"
for model in $(ls sim/models | sed 's/\.json$//'); do
  "$GPUSHARE_BIN/gpushare-sim" init --root "$work/sim-$model" --model "$model" --gpus 1 --mig off --lib "$GPUSHARE_BIN/libgpushare_sim.so" > /dev/null
  "$GPUSHARE_BIN/gpusharectl" --config "$work/sim-$model/config.toml" status --json > "$work/status-sim-$model.json"
  echo "$model $work/status-sim-$model.json" >> "$work/sim-models"
done
cmp=$($PY - "$OUT/status-real.json" "$work/sim-models" "$OUT/status-sim.json" <<'PYEOF'
import json, shutil, sys
real = json.load(open(sys.argv[1]))["gpus"][0]
for line in open(sys.argv[2]):
    model, path = line.split()
    sim = json.load(open(path))["gpus"][0]
    if sim["name"] == real["name"]:
        shutil.copy(path, sys.argv[3])
        same = real["profiles"] == sim["profiles"]
        print(("equal" if same else "DIFFERENT") + f": {real['name']} vs model {model}, {len(real['profiles'])} profiles: " + ", ".join(p["name"] for p in real["profiles"]))
        break
else:
    print(f"NO MODEL: the simulator has no model named {real['name']!r}")
PYEOF
)
check "real profile table equals the simulator's" "$(echo "$cmp" | grep -q '^equal' && echo 0 || echo 1)" "$cmp"
"$GPUSHARE_BIN/gpusharectl" status >> "$OUT/status-mps.txt" 2>&1

note "## 6. hostile MPS tenants, gpu.mps=25 gpu.mps.memory=4G"
# Each tenant gets the same share and then tries to leave it from inside: drop gpushare's MPS
# env, raise the thread percentage, or point CUDA at an empty pipe folder of its own. Only
# the GPU's compute mode decides the last one; gpushare does not change it here.
mode_before=$(nvidia-smi -i 0 --query-gpu=compute_mode --format=csv,noheader)
note "compute mode found: $mode_before (left so)"
bundle env-dropped "env -u CUDA_MPS_PIPE_DIRECTORY -u CUDA_MPS_ACTIVE_THREAD_PERCENTAGE -u CUDA_MPS_PINNED_DEVICE_MEM_LIMIT python3 -c '$PROBE'" '{"gpu.mps": "25", "gpu.mps.memory": "4G"}'
bundle share-raised "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 python3 -c '$PROBE'" '{"gpu.mps": "25", "gpu.mps.memory": "4G"}'
bundle pipe-redirected "mkdir -p /tmp/elsewhere && CUDA_MPS_PIPE_DIRECTORY=/tmp/elsewhere python3 -c '$PROBE'" '{"gpu.mps": "25", "gpu.mps.memory": "4G"}'
for n in env-dropped share-raised pipe-redirected; do run_bg $n; done
"$GPUSHARE_BIN/gpusharectl" status > "$OUT/status-hostile.txt" 2>&1
"$GPUSHARE_BIN/gpusharectl" doctor > "$OUT/doctor-hostile.txt" 2>&1
for n in env-dropped share-raised pipe-redirected; do finish $n; done
held() { # held RESULT: the daemon's share bound it (fewer SMs than the GPU has, 6 GiB refused)
  sms=$(field "$1" sms)
  [ -n "$sms" ] && [ "$sms" != None ] && [ "$sms" -lt "$host_sms" ] && field "$1" alloc_6gib | grep -q '^failed'
}
for n in env-dropped share-raised; do
  r=$(result $n)
  check "$n tenant is held by the daemon" "$(held "$r" && echo 0 || echo 1)" "sms=$(field "$r" sms) of $host_sms, 6 GiB: $(field "$r" alloc_6gib)"
done
r=$(result pipe-redirected)
escaped=1
if [ "$(field "$r" available)" = True ] && ! held "$r"; then escaped=0; fi
detail="sms=$(field "$r" sms) of $host_sms, 6 GiB: $(field "$r" alloc_6gib); printed: $(tail -c 300 "$work/pipe-redirected/out" | tr '\n' ' ')"
case "$mode_before" in
  Default) check "pipe-redirected tenant escapes in compute mode Default (why mps.exclusive exists)" "$escaped" "$detail" ;;
  Exclusive_Process) check "pipe-redirected tenant gets no context of its own in Exclusive_Process" "$([ $escaped = 1 ] && echo 0 || echo 1)" "$detail" ;;
  *) note "- pipe-redirected tenant in compute mode $mode_before (not judged): $detail" ;;
esac
mode_after=$(nvidia-smi -i 0 --query-gpu=compute_mode --format=csv,noheader)
check "compute mode unchanged" "$([ "$mode_before" = "$mode_after" ] && echo 0 || echo 1)" "$mode_before before, $mode_after after"

note ""
note "$fails failed"
cat "$results"
exit $((fails > 0))
