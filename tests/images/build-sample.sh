#!/bin/bash
# Build the sample image busybox:test from Debian's busybox-static package,
# with umoci and skopeo, and write it in both archive formats:
#
#   OUT_DIR/busybox-oci.tar     OCI image layout, named busybox:test by the
#                               io.containerd.image.name index annotation
#   OUT_DIR/busybox-docker.tar  docker-archive (`docker load` reads it too)
#
# Usage: tests/images/build-sample.sh OUT_DIR
#
# Needs no network. The busybox binary comes from the package's .deb in apt's
# cache when there is one, otherwise from the installed busybox-static
# package. Each run builds from scratch in a temporary directory and replaces
# the outputs only when everything succeeded; the same package gives the same
# image ID every time.
set -euo pipefail

IMAGE_NAME=docker.io/library/busybox:test
SHORT_NAME=busybox:test
TAG=test
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
    echo "build-sample.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
OUT_DIR=$1
for tool in umoci skopeo jq; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install $tool)"
done
mkdir -p "$OUT_DIR"

work=$(mktemp -d "${TMPDIR:-/tmp}/build-sample.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Prefer the .deb in apt's cache: it is the package as Debian ships it,
# whatever the local install has been through since.
find_busybox() {
    local deb
    deb=$(ls /var/cache/apt/archives/busybox-static_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$deb" ]; then
        dpkg-deb -x "$deb" "$work/deb"
        echo "$work/deb/bin/busybox"
        return
    fi
    dpkg -L busybox-static 2>/dev/null | grep -x '/bin/busybox' \
        || die "busybox-static is neither in apt's cache nor installed (apt-get install busybox-static)"
}
busybox=$(find_busybox)
[ -x "$busybox" ] || die "$busybox is not an executable"

# umoci unpack needs root to keep file owners; --rootless works without.
rootless=()
[ "$(id -u)" -eq 0 ] || rootless=(--rootless)

layout=$work/oci
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:$TAG"
umoci unpack "${rootless[@]}" --image "$layout:$TAG" "$bundle"

rootfs=$bundle/rootfs
install -d -m 0755 "$rootfs/bin" "$rootfs/etc" "$rootfs/home"
install -d -m 0700 "$rootfs/root"
install -d -m 1777 "$rootfs/tmp"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$rootfs/etc/group"

# Every time stamp is the busybox binary's, so the same package always gives
# the same image ID, and reloading it finds its layer already stored.
epoch=$(stat -c %Y "$busybox")
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
find "$rootfs" -exec touch -h -d "@$epoch" {} +

umoci repack --image "$layout:$TAG" --history.created "$created" \
    --history.created_by "tests/images/build-sample.sh" "$bundle"
umoci config --image "$layout:$TAG" --no-history --created "$created" \
    --config.cmd sh \
    --config.env "$PATH_ENV"
umoci gc --layout "$layout"

# umoci names the image by its tag alone; loaders need the whole reference.
jq --arg name "$IMAGE_NAME" \
    '.manifests |= map(.annotations["io.containerd.image.name"] = $name)' \
    "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"

tar -C "$layout" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    -cf "$work/busybox-oci.tar" oci-layout index.json blobs
skopeo --insecure-policy copy --quiet \
    "oci:$layout:$TAG" "docker-archive:$work/busybox-docker.tar:$SHORT_NAME"

mv "$work/busybox-oci.tar" "$OUT_DIR/busybox-oci.tar"
mv "$work/busybox-docker.tar" "$OUT_DIR/busybox-docker.tar"
echo "wrote $OUT_DIR/busybox-oci.tar and $OUT_DIR/busybox-docker.tar ($SHORT_NAME)"
