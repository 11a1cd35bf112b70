#!/usr/bin/env bash
# Build one target of containers/Dockerfile with podman on a machine that reaches no
# container registry, then smoke-test it (`sdce --help` inside the image).
#
#   sudo containers/build-local.sh [cpu|cuda|tpu]      (default: cpu)
#
# What makes it work without a registry or a full container host:
#   * the base image is made locally: a `debootstrap --variant=minbase bookworm` root with
#     python3 and python3-venv, imported with `podman import` (bookworm's Python 3.11 is
#     the same minor version as the python:3.11-slim-bookworm base of the real build);
#   * podman runs with runc, the cgroupfs manager, vfs storage and explicit ulimits (the
#     default crun/systemd/overlay set-up fails in unprivileged sandboxes);
#   * `podman build --isolation chroot --network host`;
#   * the host's CA bundle is bind-mounted read-only for pip (PIP_CERT), never copied into
#     a layer; SDCE_WHEELHOUSE, when set, is bind-mounted the same way as a find-links
#     wheelhouse (e.g. a mirror of the PyTorch CPU wheels).
#
# Environment:
#   SDCE_BUILD_ROOT      state folder (podman storage, base rootfs)   [/var/tmp/sdce-podman]
#   SDCE_DEBIAN_MIRROR   mirror for debootstrap                  [http://deb.debian.org/debian]
#   SDCE_WHEELHOUSE      host folder of wheels for pip --find-links          [unset]
#   SDCE_TORCH_INDEX     PyTorch CPU index for cpu/tpu; empty for none
#                        [https://download.pytorch.org/whl/cpu]
#   SDCE_CA_BUNDLE       CA bundle for pip           [/etc/ssl/certs/ca-certificates.crt]
#   SDCE_IMAGE_TAG       tag of the built image                [localhost/sdce:<target>]
# Needs: podman, buildah's runtime deps, runc, debootstrap (Debian: apt-get install
# podman buildah runc debootstrap), root.
set -euo pipefail

target="${1:-cpu}"
case "${target}" in
  cpu | cuda | tpu) ;;
  *)
    echo "build-local.sh: unknown target '${target}' (cpu, cuda or tpu)" >&2
    exit 2
    ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
root="${SDCE_BUILD_ROOT:-/var/tmp/sdce-podman}"
mirror="${SDCE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${SDCE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
torch_index="${SDCE_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
tag="${SDCE_IMAGE_TAG:-localhost/sdce:${target}}"
base_tag="localhost/sdce-base:bookworm"

for tool in podman debootstrap runc; do
  if ! command -v "${tool}" > /dev/null 2>&1; then
    echo "build-local.sh: '${tool}' not found (apt-get install podman buildah runc debootstrap)" >&2
    exit 3
  fi
done
if [[ "$(id -u)" != 0 ]]; then
  echo "build-local.sh: run as root (debootstrap and rootful podman)" >&2
  exit 3
fi

# Explicit ulimits, within this machine's hard limits (asking for more fails in sandboxes).
# (nofile only: podman's own nproc limit is what RUN steps inherit.)
nofile="$(ulimit -Sn):$(ulimit -Hn)"
nofile="${nofile//unlimited/1048576}"

mkdir -p "${root}/storage" "${root}/run" "${root}/tmp"
# Podman configuration for this build only; the host's files are left alone.
cat > "${root}/storage.conf" << EOF
[storage]
driver = "vfs"
runroot = "${root}/run"
graphroot = "${root}/storage"
EOF
cat > "${root}/containers.conf" << EOF
[containers]
default_ulimits = ["nofile=${nofile}"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_STORAGE_CONF="${root}/storage.conf"
export CONTAINERS_CONF="${root}/containers.conf"
export TMPDIR="${root}/tmp"
podman_args=(--cgroup-manager=cgroupfs --runtime=runc)

# 1. The local base image.
if ! podman "${podman_args[@]}" image exists "${base_tag}"; then
  rootfs="${root}/rootfs-bookworm"
  if [[ ! -x "${rootfs}/usr/bin/python3" ]]; then
    rm -rf "${rootfs}"
    echo "== debootstrap bookworm (minbase + python3) into ${rootfs}"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "${rootfs}" "${mirror}"
    rm -rf "${rootfs}/var/cache/apt/archives/"*.deb "${rootfs}/var/lib/apt/lists/"*
  fi
  echo "== podman import ${base_tag}"
  tar -C "${rootfs}" -c . | podman "${podman_args[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "${base_tag}"
fi

# 2. The build.
build_args=(
  --build-arg "PYTHON_BASE=${base_tag}"
  --build-arg "TPU_BASE=${base_tag}"
  --build-arg "PIP_CERT=/run/sdce-host-ca.crt"
  --volume "${ca_bundle}:/run/sdce-host-ca.crt:ro"
)
if [[ "${target}" == cuda ]]; then
  # No CUDA base can be pulled here; the cuda stage's Ubuntu steps run on the Debian base.
  build_args+=(--build-arg "CUDA_BASE=${base_tag}")
fi
if [[ "${target}" != cuda ]]; then
  build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${torch_index}")
fi
if [[ -n "${SDCE_WHEELHOUSE:-}" ]]; then
  build_args+=(--build-arg "PIP_FIND_LINKS=/run/sdce-wheelhouse"
    --volume "${SDCE_WHEELHOUSE}:/run/sdce-wheelhouse:ro")
fi
echo "== podman build --target ${target} -t ${tag}"
podman "${podman_args[@]}" build \
  --isolation chroot --network host \
  --ulimit "nofile=${nofile}" \
  --file "${repo}/containers/Dockerfile" \
  --ignorefile "${repo}/containers/Dockerfile.dockerignore" \
  --target "${target}" \
  "${build_args[@]}" \
  --tag "${tag}" \
  "${repo}"

# 3. Smoke test: the entry point answers, as the image's non-root user. One container
# (each `podman run` copies the whole image under vfs). runc needs an explicit nproc
# limit here: podman's default exceeds what the sandbox allows.
nproc_hard="$(ulimit -Hu)"
[[ "${nproc_hard}" == unlimited ]] && nproc_hard=1048576
nproc=$((nproc_hard < 32768 ? nproc_hard : 32768))
echo "== smoke: sdce --help in ${tag}"
out="$(podman "${podman_args[@]}" run --rm --network host \
  --ulimit "nofile=${nofile}" --ulimit "nproc=${nproc}:${nproc}" \
  "${tag}" sh -c 'sdce --help && echo "identity: $(id -un) $(id -u)"')"
echo "${out}"
if ! grep -q '^usage: sdce' <<< "${out}"; then
  echo "build-local.sh: 'sdce --help' printed no usage" >&2
  exit 1
fi
if ! grep -qx 'identity: sdce 10001' <<< "${out}"; then
  echo "build-local.sh: the image must run as the non-root user sdce (uid 10001)" >&2
  exit 1
fi
echo "== ok: ${tag} builds, runs as sdce (10001), and 'sdce --help' answers"
