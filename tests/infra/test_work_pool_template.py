"""The Kubernetes work pool's base job template: the shape Prefect 3's kubernetes worker expects,
and a Job that Kubernetes accepts once the worker fills it in."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any
from uuid import uuid4

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from .tools import K8S_DIR

TEMPLATE_PATH = K8S_DIR / "work-pool" / "base-job-template.json"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def template() -> dict[str, Any]:
    loaded = json.loads(TEMPLATE_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def placeholders(value: object) -> set[str]:
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholders(item) for item in value))
    return set()


def test_template_has_exactly_job_configuration_and_variables() -> None:
    assert set(template()) == {"job_configuration", "variables"}


def test_template_configures_everything_the_kubernetes_worker_configures() -> None:
    default = KubernetesWorker.get_default_base_job_template()
    assert set(template()["job_configuration"]) == set(default["job_configuration"])
    assert set(template()["variables"]["properties"]) >= set(default["variables"]["properties"])


def test_variables_are_a_valid_json_schema_whose_defaults_satisfy_it() -> None:
    variables = template()["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    defaults = {
        name: spec["default"] for name, spec in variables["properties"].items() if "default" in spec
    }
    jsonschema.Draft7Validator(variables).validate(defaults)


def test_every_placeholder_names_a_declared_variable() -> None:
    used = placeholders(template()["job_configuration"])
    declared = set(template()["variables"]["properties"])
    assert used, "the template fills in nothing"
    assert used <= declared, f"undeclared: {sorted(used - declared)}"


def test_flow_runs_use_the_least_privilege_deployer_account_in_gantry_namespace() -> None:
    properties = template()["variables"]["properties"]
    assert properties["service_account_name"]["default"] == "gantry-deployer"
    assert properties["namespace"]["default"] == "gantry"


async def _configure(values: dict[str, Any]) -> KubernetesWorkerJobConfiguration:
    # Filling in needs the API only for block or variable references, which the template has
    # none of: the client points at a bound but never-listening loopback port, so any call fails.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        async with PrefectClient(api=f"http://127.0.0.1:{port}/api") as client:
            return await KubernetesWorkerJobConfiguration.from_template_and_values(
                template(), values, client=client
            )


def _filled_job(values: dict[str, Any]) -> dict[str, Any]:
    configuration = asyncio.run(_configure(values))
    # What the worker does before it submits the Job: env as a list, run labels and command.
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="run-1"))
    manifest = configuration.job_manifest
    assert isinstance(manifest, dict)
    return manifest


def test_filled_in_template_is_a_valid_non_root_kubernetes_job() -> None:
    job = _filled_job({"image": "registry.example/gantry@sha256:" + "a" * 64, "name": "run-1"})
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "gantry-deployer"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}


def test_a_value_outside_the_schema_is_rejected() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(template()["variables"]).validate(
            {"image_pull_policy": "Sometimes"}
        )


def test_flow_runs_mount_the_provenance_signing_key_and_trusted_keys_read_only() -> None:
    job = _filled_job({"image": "registry.example/gantry@sha256:" + "a" * 64, "name": "run-1"})
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    signing, trusted = mounts["provenance-signing-key"], mounts["provenance-trusted-keys"]
    assert signing == {
        "name": "provenance-signing-key",
        "mountPath": "/etc/gantry/provenance-signing",
        "readOnly": True,
    }
    assert trusted["mountPath"] == "/etc/gantry/provenance-trusted-keys" and trusted["readOnly"]
    # The private key: read-only, and for the flow run's own user and group (the pod's fsGroup)
    # only, never for others.
    assert volumes["provenance-signing-key"]["secret"] == {
        "secretName": "gantry-provenance-signing-key",
        "optional": True,
        "defaultMode": 0o440,
    }
    assert volumes["provenance-trusted-keys"]["configMap"] == {
        "name": "gantry-provenance-trusted-keys",
        "optional": True,
        "defaultMode": 0o444,
    }
    assert env["GANTRY_SUPPLY_SIGNING_KEY"] == (
        "/etc/gantry/provenance-signing/provenance-signing.pem"
    )
    assert env["GANTRY_SUPPLY_TRUSTED_KEYS"] == "/etc/gantry/provenance-trusted-keys"


def test_an_evicted_flow_run_pod_ends_crashed_so_gantry_retries_it_once() -> None:
    """Eviction sends SIGTERM. Left unset, prefect-kubernetes sets the SIGTERM behaviour to
    ``reschedule`` for a Job with ``backoffLimit`` 0: the same run would start again, never
    Crashed, outside Gantry's one tagged retry and its ``error`` status. ``crash`` makes the
    engine mark it Crashed, which deployments/crashes.py retries once."""
    job = _filled_job({"image": "registry.example/gantry@sha256:" + "a" * 64, "name": "run-1"})
    assert job["spec"]["backoffLimit"] == 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "crash"
