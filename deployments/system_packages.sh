#!/usr/bin/env bash
# Install the Debian packages Gantry's local stack runs on, where they are missing.
# Podman serves the Docker Engine API; docker-registry is the local registry (distribution v2).
set -euo pipefail

# bubblewrap runs each repository command in its own namespaces; slirp4netns gives the steps
# that opt into network "outside" a NAT with no route to the host's loopback.
packages=(git podman buildah skopeo runc fuse-overlayfs uidmap docker-registry busybox-static debootstrap bubblewrap slirp4netns iproute2 openssh-client)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# PostgreSQL's server binaries (initdb, pg_ctl) for the store's and Prefect's PostgreSQL mode:
# some images carry them without the package, so the binaries are what is looked for.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "gantry: missing system packages: ${missing[*]}" >&2
    echo "gantry: this is not a Debian/Ubuntu machine; install Podman (with its Docker API service)," >&2
    echo "        runc, the distribution registry (docker-registry), busybox-static and git by hand." >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "gantry: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "gantry: installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
