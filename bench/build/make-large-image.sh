#!/usr/bin/env bash
# Makes the large benchmark image: a Debian bookworm rootfs (mmdebstrap, variant apt, plus
# python3, perl, gcc/g++ 12, git, make) imported into an OCI image layout with umoci, one layer.
# ~520 MB uncompressed, ~12 000 files: a realistic "big" image (target: ≥ 300 MB).
#
# The layout is cached outside the repository, keyed by this script's hash, so reruns are
# instant. Prints the image reference (oci:DIR:large) on stdout.
#
# Usage: make-large-image.sh [CACHE_DIR]   (default ~/.cache/hyperpod/bench)
# Needs: mmdebstrap, umoci, root (device nodes and owners in the rootfs), network to a Debian mirror.
set -euo pipefail

cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperpod/bench}
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
layout="$cache/debian-large-$key"
tag=large
if [[ -f "$layout/.complete" ]]; then
  echo "oci:$layout:$tag"
  exit 0
fi

for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "make-large-image: $tool missing (apt-get install $tool)" >&2; exit 1; }
done
[[ $(id -u) = 0 ]] || { echo "make-large-image: run as root (rootfs owners and device nodes)" >&2; exit 1; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/.work-XXXXXX")
trap 'rm -rf "$work"' EXIT

packages=python3,perl,gcc-12,g++-12,make,git,ca-certificates,less,procps
echo "make-large-image: mmdebstrap bookworm (+$packages)" >&2
# A fixed SOURCE_DATE_EPOCH keeps timestamps written by mmdebstrap itself stable.
SOURCE_DATE_EPOCH=1700000000 mmdebstrap --variant=apt --include="$packages" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  bookworm "$work/rootfs.tar" http://deb.debian.org/debian >&2

echo "make-large-image: importing into an OCI layout with umoci" >&2
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
tar -xpf "$work/rootfs.tar" --numeric-owner --xattrs --xattrs-include='*' -C "$work/bundle/rootfs"
umoci repack --image "$work/oci:$tag" "$work/bundle" >/dev/null
umoci config --image "$work/oci:$tag" --tag "$tag" \
  --config.entrypoint /usr/bin/python3 --config.cmd=-c --config.cmd='print("hello")' \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / >/dev/null
umoci gc --layout "$work/oci"

rm -rf "$layout"
mv "$work/oci" "$layout"
touch "$layout/.complete"
echo "oci:$layout:$tag"
