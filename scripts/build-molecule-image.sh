#!/bin/sh
# Purpose: build the local Debian 12 image that the molecule scenarios run in (no image is pulled).
#
#   scripts/build-molecule-image.sh [--force]
#
# debootstrap (minbase, bookworm, with python3, python3-apt and sudo) from the Debian mirror this
# machine's apt already uses (the URIs: lines of /etc/apt/sources.list.d/debian.sources), then
# `docker import` as cutover-debian:12. Does nothing when the image exists, unless --force.
# Needs root, debootstrap and a running Docker daemon. About 40 s; 168 MB.
set -eu

IMAGE="${CUTOVER_MOLECULE_IMAGE:-cutover-debian:12}"
SOURCES=/etc/apt/sources.list.d/debian.sources

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE exists"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[ -r "$SOURCES" ] || { echo "cannot read $SOURCES to find the Debian mirror" >&2; exit 2; }

# The stanza whose Suites name bookworm-security gives the security mirror; the first other gives the main one.
mirrors=$(awk '
    /^URIs:/   { uri = $2 }
    /^Suites:/ { security = ($0 ~ /-security/) }
    /^$/       { if (uri != "") print (security ? "security " : "main ") uri; uri = ""; security = 0 }
    END        { if (uri != "") print (security ? "security " : "main ") uri }
' "$SOURCES")
MIRROR=$(echo "$mirrors" | awk '$1 == "main" { print $2; exit }')
SECURITY=$(echo "$mirrors" | awk '$1 == "security" { print $2; exit }')
[ -n "$MIRROR" ] || { echo "no URIs: line for the main archive in $SOURCES" >&2; exit 2; }
[ -n "$SECURITY" ] || SECURITY="$MIRROR-security"

ROOTFS=$(mktemp -d /tmp/cutover-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT INT TERM

debootstrap --variant=minbase --include=python3,python3-apt,sudo bookworm "$ROOTFS" "$MIRROR"

cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
echo cutover-molecule > "$ROOTFS/etc/hostname"
: > "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
# An emptied lists folder dated now makes the apt module's cache_valid_time believe the cache is fresh.
touch -d @0 "$ROOTFS/var/lib/apt/lists"

tar -C "$ROOTFS" -c . | docker import \
    --change 'CMD ["sleep","infinity"]' \
    --change 'ENV LANG=C.UTF-8' \
    - "$IMAGE"
echo "built image $IMAGE"
