"""Rendering an overlay offline: kustomize with images by digest, labels, schema validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.deploy.kubernetes.render import (
    ManifestError,
    containers,
    label_objects,
    place_images,
    render_overlay,
    validate_objects,
)
from flows.deploy.targets import DeployError
from tests.flows.deploy.kubernetes.trees import deployment, digest_ref, write_tree

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REF = digest_ref("c")


async def test_the_sample_service_renders_with_its_image_by_digest(manifests: Path) -> None:
    objects = await render_overlay(manifests, "production", {"tasks-api": REF})

    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    assert kinds == {("Deployment", "tasks-api"), ("Service", "tasks-api")}
    (deploy,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    assert [c["image"] for c in containers(deploy)] == [REF]
    assert deploy["metadata"]["namespace"] == "production"
    assert deploy["spec"]["replicas"] == 3
    validate_objects(objects, "1.32.0")


async def test_init_containers_and_cronjobs_get_the_digest_too(tmp_path: Path) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "job", "image": "tasks-api:old-tag"}],
                        }
                    }
                }
            },
        },
    }
    web = deployment()
    web["spec"]["template"]["spec"]["initContainers"] = [{"name": "migrate", "image": "tasks-api"}]
    tree = write_tree(tmp_path / "deploy", [web, job])

    objects = await render_overlay(tree, "staging", {"tasks-api": REF})

    images = [c["image"] for obj in objects for c in containers(obj)]
    assert images and set(images) == {REF}
    placements = place_images(objects, {"tasks-api": REF})
    assert {(p.kind, p.container) for p in placements} == {
        ("Deployment", "migrate"),
        ("Deployment", "api"),
        ("CronJob", "job"),
    }


async def test_labels_and_annotations_go_on_metadata_not_on_selectors(manifests: Path) -> None:
    objects = await render_overlay(manifests, "staging", {"tasks-api": REF})
    placements = place_images(objects, {"tasks-api": REF})

    label_objects(objects, placements, "acme-tasks-api", "staging", "f" * 40)

    for obj in objects:
        assert obj["metadata"]["labels"]["gantry.dev/repository"] == "acme-tasks-api"
        assert obj["metadata"]["annotations"]["gantry.dev/commit-sha"] == "f" * 40
    (deploy,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    assert json.loads(deploy["metadata"]["annotations"]["gantry.dev/images"]) == {
        "tasks-api": "tasks-api"
    }
    assert "gantry.dev/repository" not in deploy["spec"]["selector"]["matchLabels"]
    assert "gantry.dev/repository" not in deploy["spec"]["template"]["metadata"]["labels"]
    validate_objects(objects, "1.32.0")


def test_every_invalid_object_is_named_in_one_error() -> None:
    broken = deployment(name="one", replicas="three")
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}

    with pytest.raises(ManifestError) as caught:
        validate_objects([deployment(name="fine"), broken, unknown], "1.32.0")

    message = str(caught.value)
    assert "Deployment/one: spec.replicas: 'three' is not of type 'integer'" in message
    assert "Widget/w: no schema for example.com/v1 Widget" in message
    assert "Deployment/fine" not in message
    assert isinstance(caught.value, DeployError) and caught.value.rolled_back is False


async def test_a_missing_overlay_is_a_clear_error(manifests: Path) -> None:
    with pytest.raises(ManifestError, match="no kustomize overlay for qa"):
        await render_overlay(manifests, "qa", {"tasks-api": REF})


async def test_a_kustomize_failure_carries_kustomizes_message(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment()])
    (tree / "base" / "kustomization.yaml").write_text("resources: [missing.yaml]\n")

    with pytest.raises(ManifestError, match=r"kubectl kustomize .* failed: .*missing\.yaml"):
        await render_overlay(tree, "staging", {"tasks-api": REF})


async def test_without_kubectl_on_path_the_error_says_how_to_get_it(
    manifests: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ManifestError, match=r"kubectl is not installed.*Debian package 'kubectl'"):
        await render_overlay(manifests, "staging", {"tasks-api": REF})
