#!/usr/bin/env bash
# `make image`: the container image of deploy/Dockerfile, built without a daemon and without
# pulling a base image, from the release binaries in target/release (`make build` first).
#
# Output (both rebuilt from nothing on every run):
#   target/image/mcp-cluster       OCI image layout, tags <workspace version> and latest
#   target/image/mcp-cluster.tar   the same layout as one tar (an "oci-archive")
#
# The root file system is assembled by hand, FROM scratch, in the layout of the Dockerfile's
# runtime stage (gcr.io/distroless/cc-debian12:nonroot):
#   /usr/local/bin/{gateway,session-worker,auth-service}   stripped copies of target/release
#   the shared libraries they link (ldd) and the dynamic loader, at the paths ldd names
#   /etc/passwd, /etc/group        root, nobody and nonroot (65532:65532)
#   /etc/nsswitch.conf             files, then DNS (glibc's getaddrinfo for NATS_URL host names)
#   /etc/ssl/certs/ca-certificates.crt   the host's CA bundle: the binaries use rustls with the
#                                  platform's roots (reqwest "rustls" → rustls-platform-verifier
#                                  → rustls-native-certs), not compiled-in webpki roots
#   /etc/os-release, /var/lib/dpkg/status.d/<pkg>   what the libraries came from, for scanners
#   /tmp (1777), /home/nonroot (0700, 65532: the working directory)
# and packed with umoci (Debian package `umoci`): init, new, unpack, repack, config. umoci needs
# no daemon, no storage driver and no base image; buildah could do the same (`buildah from
# scratch`) but brings iptables, container networking and a storage configuration with it.
#
# Reproducible: every file's time, the layer's history and the config's `created` are
# SOURCE_DATE_EPOCH (default: the time of the last commit), so the same binaries give the same
# digest. Needs root (umoci records owners as they are on disk: root, and 65532 for
# /home/nonroot). Checked by tests/deploy/test_image.py.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

IMAGE_NAME=mcp-cluster
OUT_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/image"
LAYOUT="$OUT_DIR/$IMAGE_NAME"
BINARIES=(gateway session-worker auth-service)
NONROOT=65532
# The runtime configuration, the same as deploy/Dockerfile's runtime stage.
CMD=/usr/local/bin/gateway
WORKDIR=/home/nonroot
ENVS=(
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  # The binaries default to loopback, which nothing outside a container reaches.
  GATEWAY_LISTEN=0.0.0.0:8788 GATEWAY_ADMIN_LISTEN=0.0.0.0:9788
  WORKER_ADMIN_LISTEN=0.0.0.0:9790
  AUTH_LISTEN=0.0.0.0:8790 AUTH_ADMIN_LISTEN=0.0.0.0:9791
)
PORTS=(8788/tcp 9788/tcp 9790/tcp 8790/tcp 9791/tcp)

# --- tools ----------------------------------------------------------------------------------
missing=()
command -v umoci >/dev/null || missing+=("umoci (apt-get install -y umoci)")
command -v strip >/dev/null || missing+=("strip (apt-get install -y binutils)")
command -v ldd >/dev/null || missing+=("ldd (apt-get install -y libc-bin)")
command -v tar >/dev/null || missing+=("tar (apt-get install -y tar)")
[[ -f /etc/ssl/certs/ca-certificates.crt ]] \
  || missing+=("/etc/ssl/certs/ca-certificates.crt (apt-get install -y ca-certificates)")
((${#missing[@]} == 0)) || die "missing: ${missing[*]}; \`make deps\` installs them"
((EUID == 0)) || die "run as root: umoci records file owners as they are on disk (root, and \
$NONROOT for /home/nonroot). Without root, build deploy/Dockerfile with Docker instead"
for b in "${BINARIES[@]}"; do
  [[ -x "$RELEASE_DIR/$b" ]] || die "$RELEASE_DIR/$b is missing: run \`cargo build --release --workspace\` (make build)"
done

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
[[ -n "$VERSION" ]] || die "no version in Cargo.toml [workspace.package]"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# --no-optional-locks: only read the repository (no index refresh while others work in it).
if [[ "$REVISION" != unknown && -n "$(git --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  REVISION+="-dirty"
fi
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

# --- an empty image, unpacked into a bundle whose rootfs we fill ----------------------------
stage="$OUT_DIR/.build-$IMAGE_NAME"
trap 'rm -rf "$stage"' EXIT
rm -rf "$stage" "$LAYOUT" "$LAYOUT.tar"
mkdir -p "$OUT_DIR"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$VERSION"
umoci unpack --image "$LAYOUT:$VERSION" "$stage/bundle" >/dev/null
rootfs="$stage/bundle/rootfs"

install -d -m 0755 "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/var/lib/dpkg/status.d"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o "$NONROOT" -g "$NONROOT" "$rootfs/home/nonroot"
for b in "${BINARIES[@]}"; do
  strip --strip-all -o "$rootfs/usr/local/bin/$b" "$RELEASE_DIR/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done

# Shared libraries and the loader, copied (symlinks resolved) to the paths ldd names: the
# loader's path is fixed in each binary (PT_INTERP), the libraries are found in its default
# directories.
libs=()
for b in "${BINARIES[@]}"; do
  out="$(ldd "$RELEASE_DIR/$b" 2>&1)" || { [[ "$out" == *"not a dynamic executable"* ]] && continue; die "ldd $b: $out"; }
  [[ "$out" != *"not found"* ]] || die "ldd $b: a library is missing on this machine: $out"
  while read -r lib; do libs+=("$lib"); done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
done
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
pkgs=()
for lib in "${libs[@]}"; do
  install -D -m "$(stat -L -c %a "$lib")" "$lib" "$rootfs$lib"
  if command -v dpkg >/dev/null && pkg="$(dpkg -S "$lib" 2>/dev/null)"; then pkgs+=("${pkg%%:*}"); fi
done
# The packages those files come from, as distroless records them (trivy, grype read this).
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sed '/^$/d' | sort -u)
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >"$rootfs/var/lib/dpkg/status.d/${pkg%%:*}"
done
[[ -f /etc/os-release ]] && install -m 0644 /etc/os-release "$rootfs/etc/os-release"

install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf '%s\n' \
  "root:x:0:0:root:/root:/sbin/nologin" \
  "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin" \
  "nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin" >"$rootfs/etc/passwd"
printf '%s\n' "root:x:0:" "nobody:x:65534:" "nonroot:x:$NONROOT:" >"$rootfs/etc/group"
printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- one layer, then the configuration ------------------------------------------------------
umoci repack --image "$LAYOUT:$VERSION" --history.created "$CREATED" \
  --history.created_by "scripts/image.sh: ${BINARIES[*]}, their libraries, CA bundle, nonroot user" \
  "$stage/bundle"
config=(--created "$CREATED" --architecture "$ARCH" --os linux --author mcp-cluster
  --config.user "$NONROOT:$NONROOT" --config.workingdir "$WORKDIR" --config.cmd "$CMD"
  --config.stopsignal SIGTERM)
for e in "${ENVS[@]}"; do config+=(--config.env "$e"); done
for p in "${PORTS[@]}"; do config+=(--config.exposedports "$p"); done
for label in \
  "org.opencontainers.image.title=mcp-cluster" \
  "org.opencontainers.image.description=OAuth-protected, horizontally scalable remote MCP server: /usr/local/bin/gateway (default), session-worker, auth-service" \
  "org.opencontainers.image.version=$VERSION" \
  "org.opencontainers.image.revision=$REVISION" \
  "org.opencontainers.image.created=$CREATED" \
  "org.opencontainers.image.licenses=Apache-2.0"; do
  config+=(--config.label "$label" --manifest.annotation "$label")
done
umoci config --image "$LAYOUT:$VERSION" "${config[@]}" \
  --history.created "$CREATED" --history.created_by "scripts/image.sh: config"
umoci tag --image "$LAYOUT:$VERSION" latest
umoci gc --layout "$LAYOUT"

chmod 0644 "$LAYOUT/index.json"  # umoci writes it 0600
tar -C "$LAYOUT" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -cf "$LAYOUT.tar" .

digest="$(grep -o '"digest":"sha256:[0-9a-f]*"' "$LAYOUT/index.json" | head -n1 | cut -d'"' -f4)"
archive_bytes="$(stat -c %s "$LAYOUT.tar")"
rootfs_bytes="$(du -sb "$rootfs" | cut -f1)"
log "image $IMAGE_NAME:$VERSION (also :latest), $ARCH, revision $REVISION"
log "  layout   ${LAYOUT#"$REPO_ROOT"/}"
log "  archive  ${LAYOUT#"$REPO_ROOT"/}.tar"
log "  size     $((archive_bytes / 1024 / 1024)) MiB compressed ($archive_bytes bytes), $((rootfs_bytes / 1024 / 1024)) MiB unpacked"
log "  digest   $digest"
echo "$digest"
