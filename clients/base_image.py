"""The local Python base image, made offline from Debian packages and cached.

No image can be pulled from the internet, so the sample service (and any service whose
Dockerfile starts ``FROM localhost/gantry/python-base:bookworm``) builds on a Debian root file
system made by ``debootstrap`` from the machine's own package mirror. The root file system is
kept as a tarball in a cache folder: a fresh engine imports it in seconds instead of running
debootstrap again (about 50 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from core.mounts import unmount_under
from core.settings import StackSettings

BASE_REPOSITORY = "localhost/gantry/python-base"
BASE_TAG = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
SUITE = "bookworm"
# Bump when the recipe changes, so an old cached tarball is not re-used.
RECIPE = "1"
PACKAGES = ("python3", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Documentation, translations and package lists are dead weight in a runtime image.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists")


class BaseImageError(RuntimeError):
    """The base image could not be made or imported."""


def _source_lines(path: Path) -> list[str]:
    files = sorted(path.glob("*")) if path.is_dir() else [path]
    lines: list[str] = []
    for file in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines += file.read_text().splitlines()
    return lines


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The Debian mirror this machine's apt uses for ``bookworm`` (not the security suite)."""
    lines = [line for path in sources for line in _source_lines(path)]
    # One-line format: "deb [opts] URI SUITE COMPONENTS".
    for line in lines:
        match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match and match.group(2) == SUITE and "security" not in match.group(1):
            return match.group(1).rstrip("/")
    # deb822 format: "URIs:" and "Suites:" fields of one stanza.
    uri: str | None = None
    for line in [*lines, ""]:
        key, _, value = line.partition(":")
        if not line.strip():
            uri = None
        elif key.strip() == "URIs":
            uri = value.strip().split()[0]
        elif key.strip() == "Suites" and uri and SUITE in value.split() and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_rootfs_tar(destination: Path, mirror: str | None = None, timeout: float = 600.0) -> Path:
    """Run debootstrap and write the trimmed root file system as a tarball at ``destination``."""
    if shutil.which("debootstrap", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None:
        raise BaseImageError("debootstrap is not installed; run `make system-packages`")
    if os.geteuid() != 0:
        raise BaseImageError("making the base image needs root (debootstrap uses chroot)")
    env = dict(os.environ)
    env["PATH"] = "/usr/sbin:/sbin:" + env.get("PATH", "/usr/bin:/bin")
    env["DEBIAN_FRONTEND"] = "noninteractive"
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=destination.parent))
    rootfs = work / "rootfs"
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror or debian_mirror(),
    ]
    try:
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BaseImageError(f"debootstrap did not finish in {timeout:.0f} s") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise BaseImageError(f"debootstrap failed ({done.returncode}):\n{tail}")
        for relative in TRIM:
            shutil.rmtree(rootfs / relative, ignore_errors=True)
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = destination.with_suffix(".partial")
        tar = ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial)]
        tar += ["--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "."]
        packed = subprocess.run(tar, capture_output=True, text=True, timeout=300, check=False)
        if packed.returncode != 0:
            raise BaseImageError(f"packing the root file system failed: {packed.stderr.strip()}")
        partial.replace(destination)
    finally:
        unmount_under(rootfs)
        shutil.rmtree(work, ignore_errors=True)
    return destination


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Builds run concurrently (threads and worker processes); one of them makes the base.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _present(client: docker.DockerClient) -> bool:
    try:
        client.images.get(BASE_IMAGE)
    except ImageNotFound:
        return False
    return True


def _import(client: docker.DockerClient, tarball: Path) -> None:
    changes = ['CMD ["python3"]', "ENV LANG=C.UTF-8", "LABEL org.gantry.base-recipe=" + RECIPE]
    answer = client.api.import_image(src=str(tarball), changes=changes)
    # The answer is a JSON stream; Podman ignores the tag parameter, so tag by id.
    image_id: str | None = None
    for line in str(answer).splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if "error" in item:
                raise BaseImageError(f"importing the base image failed: {item['error']}")
            image_id = item.get("id") or image_id
    if image_id is None:
        raise BaseImageError(f"importing the base image gave no image id: {answer!s:.200}")
    client.images.get(image_id).tag(BASE_REPOSITORY, BASE_TAG)


def ensure_base_image(
    client: docker.DockerClient, cache_dir: Path | None = None, mirror: str | None = None
) -> str:
    """Make ``localhost/gantry/python-base:bookworm`` unless the engine has it; returns its name."""
    try:
        if _present(client):
            return BASE_IMAGE
        cache = (cache_dir or StackSettings().state_dir / "cache").resolve()
        tarball = cache / f"python-base-{SUITE}-{RECIPE}.tar"
        with _locked(cache / "python-base.lock"):
            if _present(client):
                return BASE_IMAGE
            if not tarball.exists():
                build_rootfs_tar(tarball, mirror)
            _import(client, tarball)
    except DockerException as exc:
        raise BaseImageError(f"the container engine refused the base image: {exc}") from exc
    return BASE_IMAGE
