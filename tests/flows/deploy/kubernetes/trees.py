"""Small kustomize trees for tests, written the way a service repository lays them out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REGISTRY = "127.0.0.1:5000/acme-tasks-api/tasks-api"


def digest_ref(fill: str) -> str:
    """A reference by digest whose digest is one hex character repeated."""
    return f"{REGISTRY}@sha256:{fill * 64}"


def deployment(name: str = "tasks-api", image: str = "tasks-api", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "api", "image": image}]},
            },
        },
    }
    body["spec"].update(spec)
    return body


def write_tree(
    root: Path,
    resources: list[dict[str, Any]],
    images: tuple[str, ...] = ("tasks-api",),
    namespace: str | None = "staging",
    environment: str = "staging",
) -> Path:
    """``root/base`` with the resources and ``root/overlays/<environment>``; returns root."""
    base = root / "base"
    base.mkdir(parents=True)
    names = []
    for index, resource in enumerate(resources):
        name = f"{index}-{resource['kind'].lower()}.yaml"
        (base / name).write_text(yaml.safe_dump(resource))
        names.append(name)
    (base / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": names, "images": [{"name": image} for image in images]})
    )
    overlay = root / "overlays" / environment
    overlay.mkdir(parents=True)
    kustomization: dict[str, Any] = {"resources": ["../../base"]}
    if namespace:
        kustomization["namespace"] = namespace
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return root
