#!/usr/bin/env bash
# Assembles the root filesystems of the CP and DP images and builds them with podman.
#
#   deploy/build-image.sh [CONTEXT_DIR]
#
# Binaries come from $BIN_DIR (default dist/, made by deploy/build-release.sh). For each binary:
# the binary in /usr/local/bin, every shared library `ldd` lists (with the dynamic loader) at
# its own path, the CA roots (/etc/ssl/certs/ca-certificates.crt), /etc/passwd and /etc/group
# with root and the non-root user gatehouse (65532, no login shell), /etc/nsswitch.conf, and an
# empty /tmp (mode 1777, for the CP's --cluster-cert auto). With podman installed, then builds
# gatehouse-cp:VERSION and gatehouse-dp:VERSION from deploy/Containerfile; without it (or with
# ROOTFS_ONLY=1), stops after the root filesystems.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bin_dir=${BIN_DIR:-$repo/dist}
context=${1:-$repo/dist/image-context}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)

[ -r "$ca_bundle" ] || {
    echo "no CA bundle at $ca_bundle (apt-get install ca-certificates, or set CA_BUNDLE)" >&2
    exit 1
}

rootfs() { # rootfs NAME BINARY
    local root=$context/$1 binary=$bin_dir/$2 lib
    [ -x "$binary" ] || { echo "no binary $binary (run deploy/build-release.sh)" >&2; exit 1; }
    rm -rf "$root"
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
    chmod 1777 "$root/tmp"
    install -m 0755 "$binary" "$root/usr/local/bin/$2"
    # Shared libraries and the loader: the absolute paths in ldd's output.
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\ngatehouse:x:65532:65532:gatehouse:/nonexistent:/sbin/nologin\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\ngatehouse:x:65532:\n' >"$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

mkdir -p "$context"
rootfs cp gatehouse-cp
rootfs dp gatehouse-dp
rm -rf "$context/dp-cache" && mkdir -p "$context/dp-cache"
echo "root filesystems in $context (cp/, dp/)"

if [ "${ROOTFS_ONLY:-0}" = 1 ]; then
    exit 0
fi
if ! command -v podman >/dev/null 2>&1; then
    echo "podman not installed: root filesystems only (apt-get install podman to build images)"
    exit 0
fi
for plane in cp dp; do
    podman build --target "$plane" -t "gatehouse-$plane:$version" -f "$here/Containerfile" "$context"
done
podman image inspect --format '{{.Config.User}} {{.Config.Entrypoint}}' \
    "gatehouse-cp:$version" "gatehouse-dp:$version"
