#!/usr/bin/env bash
# Builds the Osmosis image without Docker and without pulling a base image,
# then runs `osmosis-gateway --help` in it: what images/Dockerfile builds,
# made from parts this machine can get.
#
#   scripts/image.sh build   binaries (cargo), a Debian rootfs (mmdebstrap), the image (buildah)
#   scripts/image.sh run     podman runs `osmosis-gateway --help` (and each binary's --version)
#   scripts/image.sh all     both
#
# Environment:
#   OSMOSIS_IMAGE          image name                         (default osmosis/osmosis:<gateway version>)
#   OSMOSIS_IMAGE_PROFILE  cargo profile of the binaries      (default release)
#   CARGO_TARGET_DIR       cargo's target directory           (default target)
#   OSMOSIS_CACHE          dependency cache (the rootfs tar)  (default ~/.cache/osmosis)
#
# Needs Debian's buildah, podman, runc and mmdebstrap (apt-get install them;
# root for the rootfs). On these machines buildah must use the vfs storage
# driver and chroot isolation, and podman the runc runtime with explicit
# ulimits: the defaults fail on this cgroup setup.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${OSMOSIS_IMAGE_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OSMOSIS_CACHE=${OSMOSIS_CACHE:-$HOME/.cache/osmosis}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' gateway/Cargo.toml | head -1)
IMAGE=${OSMOSIS_IMAGE:-osmosis/osmosis:$VERSION}
ROOTFS="$OSMOSIS_CACHE/image/rootfs-bookworm.tar"
BUILDAH=(buildah --storage-driver vfs)
PODMAN=(podman --storage-driver vfs --runtime runc)

log() { echo "image.sh: $*" >&2; }
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { log "$tool is required (apt-get install buildah podman runc mmdebstrap)"; exit 1; }
  done
}

rootfs() {
  [ -f "$ROOTFS" ] && return 0
  need mmdebstrap
  log "making a Debian bookworm rootfs with the binaries' libraries into $ROOTFS"
  mkdir -p "$(dirname "$ROOTFS")"
  # mmdebstrap picks the output format from the name: keep .tar last.
  mmdebstrap --mode=root --variant=extract \
    --include=libc6,libgcc-s1,zlib1g,libssl3,ca-certificates \
    bookworm "${ROOTFS%.tar}.tmp.tar"
  mv "${ROOTFS%.tar}.tmp.tar" "$ROOTFS"
}

build() {
  need buildah cargo
  local flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  [ "$PROFILE" != release ] && [ "$PROFILE" != dev ] && flag=(--profile "$PROFILE")
  log "building the binaries ($PROFILE)"
  cargo build "${flag[@]}" --locked -p osmosis-gateway -p osmosis-autoscaler -p osmosis-worker --bins --examples
  local out="$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
  rootfs
  local context
  context=$(mktemp -d)
  mkdir -p "$context/bin"
  cp "$out/osmosis-gateway" "$out/osmosis-autoscaler" "$out/osmosis-http-worker" "$context/bin/"
  cp "$out/examples/echo" "$context/bin/osmosis-echo-worker"
  cp "$out/examples/slow" "$context/bin/osmosis-slow-worker"
  ln "$ROOTFS" "$context/rootfs.tar" 2>/dev/null || cp "$ROOTFS" "$context/rootfs.tar"
  log "building $IMAGE with buildah"
  "${BUILDAH[@]}" build --isolation chroot -f images/Containerfile.offline -t "$IMAGE" "$context"
  rm -rf "$context"
  "${BUILDAH[@]}" images "$IMAGE"
}

run() {
  need podman
  # podman reads buildah's vfs store: the image is there.
  local limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
  log "podman run $IMAGE osmosis-gateway --help"
  "${PODMAN[@]}" run --rm "${limits[@]}" --read-only --user 65532:65532 "$IMAGE" osmosis-gateway --help
  local binary
  for binary in osmosis-autoscaler osmosis-http-worker osmosis-echo-worker osmosis-slow-worker; do
    "${PODMAN[@]}" run --rm "${limits[@]}" --read-only "$IMAGE" "$binary" --help >/dev/null
    echo "$binary --help: ok"
  done
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  all) build; run ;;
  *) echo "usage: $0 build|run|all" >&2; exit 2 ;;
esac
