#!/usr/bin/env bash
# Build the job image from containers/Dockerfile with podman and run it: the last step of
# .ci/run (containers/README.md says how long it takes).
#
# No container registry is reachable here, so the Dockerfile's base (python:3.11-slim-bookworm)
# cannot be pulled. A stand-in with the same name is made locally from Debian's own packages:
# debootstrap of bookworm (Python 3.11 from Debian), imported with `podman import` as
# localhost/python:3.11-slim-bookworm, and the build runs with --pull=never so the recipe is
# built unchanged. torch and the other wheels come from PyPI, as in a real build.
#
#   bash .ci/container.sh                 # installs podman + debootstrap if missing, builds, runs
#   HCLI_IMAGE=hcli:test KEEP_BASE=1 bash .ci/container.sh
set -euo pipefail
cd "$(dirname "$0")/.."

image="${HCLI_IMAGE:-localhost/hcli:ci}"
base="localhost/python:3.11-slim-bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d /tmp/hcli-container.XXXXXX)"
trap 'rm -rf "$work"' EXIT

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

t0=$(date +%s)
if ! podman image exists "$base"; then
  echo "== base image: debootstrap bookworm (python3 from Debian) -> $base"
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  # The official image's pip installs into the system Python; Debian's refuses (PEP 668).
  rm -f "$work"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf python3 "$work/rootfs/usr/bin/python"
  # Trust what this host trusts: where PyPI is reached through a TLS-inspecting proxy, its CA is
  # in the host's bundle and not in a fresh Debian's.
  cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$base" >/dev/null
fi
# This machine (cgroup v1 + v2 hybrid, no CAP_SYS_RESOURCE): crun refuses hybrid cgroups, and
# both runtimes fail to raise RLIMIT_NOFILE/NPROC to podman's defaults; runc with explicit,
# lower limits works.
run_opts=(--runtime runc --ulimit nofile=8192:8192 --ulimit nproc=8192:8192)
command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
t1=$(date +%s)
echo "== podman build -f containers/Dockerfile -t $image (base ready in $((t1 - t0)) s)"
podman build "${run_opts[@]}" --pull=never -f containers/Dockerfile -t "$image" .
t2=$(date +%s)
echo "== smoke test"
podman --runtime runc run "${run_opts[@]:2}" --rm "$image" --help | head -n 5
podman --runtime runc run "${run_opts[@]:2}" --rm --entrypoint python "$image" -c \
  "import torch, h5py, timm, hcli, jobs.engine; print('torch', torch.__version__, 'ok')"
echo "== a tiny training run inside the image (synthetic data, read through data.stage_to_local)"
mkdir -p "$work/job"
podman --runtime runc run "${run_opts[@]:2}" --rm -v "$work/job:/work" --entrypoint sh "$image" -c '
  set -e
  hcli data synth --out /work/raw --n 24 --seed 1 --size 96 >/dev/null
  hcli data prepare --source /work/raw --out /work/data >/dev/null
  hcli submit multiclass --foreground --runs-dir /work/runs -o data.root=/work/data \
    -o model.backbone=convnext -o "model.encoder_kwargs={depths: [1, 1, 1, 1], dims: [16, 32, 64, 128]}" \
    -o model.decoder_channels=16 -o data.crop_size=64 -o data.num_workers=0 -o data.k=3 \
    -o train.batch_size=2 -o train.steps=6 -o train.warmup_steps=2 -o train.val_every_steps=6 \
    -o train.device=cpu -o train.threads=1 -o data.stage_to_local=true >/dev/null
  python -c "
import glob, json
(run,) = glob.glob(\"/work/runs/multiclass-*\")
res = json.load(open(run + \"/results.json\"))
data = json.load(open(run + \"/provenance.json\"))[\"data\"]
assert data[\"staged\"], data
print(\"trained\", res[\"run_id\"], \"miou\", round(res[\"miou\"], 4), \"read from\", data[\"read_from\"])
"'
t3=$(date +%s)
echo "container: base $((t1 - t0)) s, build $((t2 - t1)) s, smoke and tiny run $((t3 - t2)) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "hcli|python" || true
