"""The provenance keys in Terraform: from each environment's root to the prefect module.

The signing key's secret is named by each root (a required variable: an environment whose merges
sign nothing could never release), the trusted public keys are the root's committed
``provenance-trusted-keys/*.pub`` files, and modules/environment passes both to modules/prefect,
which makes them the Secret and the ConfigMap flow runs mount.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flows.supply.keys import SigningKey, key_id, public_pem

from .tools import ENVIRONMENTS, ENVS_DIR, MODULES_DIR, find_terraform, labelled, load_hcl, unquote
from .tools import terraform_env as tools_env

TERRAFORM, NO_TERRAFORM = find_terraform()
FROM_ENVIRONMENT = {
    "provenance_signing_key_secret_arn": "${var.provenance_signing_key_secret_arn}",
    "provenance_trusted_public_keys": "${var.provenance_trusted_public_keys}",
}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_passes_its_signing_secret_and_committed_public_keys(env: str) -> None:
    root = load_hcl(ENVS_DIR / env)
    call = labelled(root["module"])["environment"]
    assert unquote(call["provenance_signing_key_secret_arn"]) == (
        "${var.provenance_signing_secret_arn}"
    )
    assert unquote(call["provenance_trusted_public_keys"]) == (
        "${local.provenance_trusted_public_keys}"
    )
    variable = labelled(root["variable"])["provenance_signing_secret_arn"]
    assert "default" not in variable, "an environment must name its signing key's secret"
    (root_locals,) = root["locals"]
    trusted = str(unquote(root_locals["provenance_trusted_public_keys"]))
    assert 'fileset("${path.module}/provenance-trusted-keys", "*.pub")' in trusted


def test_the_environment_module_hands_both_to_the_prefect_module() -> None:
    prefect_call = labelled(load_hcl(MODULES_DIR / "environment")["module"])["prefect"]
    for name, value in FROM_ENVIRONMENT.items():
        assert unquote(prefect_call[name]) == value, name
    declared = labelled(load_hcl(MODULES_DIR / "prefect")["variable"])
    assert set(FROM_ENVIRONMENT) <= set(declared)


def _public_key_pem() -> tuple[str, str]:
    public = SigningKey.generate().public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return f"{key_id(public)}.pub", public_pem(public).decode()


def _plan_environment_variables(tmp_path: Path, trusted: dict[str, str]) -> tuple[int, str]:
    """``terraform plan`` of modules/environment's variables alone, with ``trusted`` given."""
    assert TERRAFORM is not None
    workdir = tmp_path / "variables"
    workdir.mkdir(parents=True)
    shutil.copy2(MODULES_DIR / "environment" / "variables.tf", workdir / "variables.tf")
    values = {
        "environment": "staging",
        "network": {"cidr_block": "10.20.0.0/16", "single_nat_gateway": True},
        "availability_zones": ["a", "b", "c"],
        "node_groups": {},
        "database": {
            "instance_class": "db.t4g.medium",
            "allocated_storage_gb": 20,
            "max_allocated_storage_gb": 200,
            "multi_az": False,
            "deletion_protection": False,
            "backup_retention_days": 7,
        },
        "prefect": {"server_replicas": 1, "worker_replicas": 1},
        "page_on_call": False,
        "gantry_image_tag": "1",
        "webhook_secret_arn": "arn:aws:secretsmanager:eu-west-1:000000000000:secret:w",
        "webhook_repositories": ["acme/*"],
        "runbook_base_url": "https://example.invalid/runbooks",
        "notify_handles": [],
        "escalation_schedule_ids": [],
        "provenance_trusted_public_keys": trusted,
    }
    (workdir / "test.auto.tfvars.json").write_text(json.dumps(values))
    env = tools_env(tmp_path)
    init = TERRAFORM.run(workdir, "init", "-backend=false", "-input=false", "-no-color", env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    plan = TERRAFORM.run(workdir, "plan", "-input=false", "-no-color", env=env)
    return plan.returncode, plan.stdout + plan.stderr


@pytest.mark.skipif(TERRAFORM is None, reason=NO_TERRAFORM)
def test_trusted_keys_must_be_public_pems_named_by_their_key_id(tmp_path: Path) -> None:
    name, pem = _public_key_pem()
    assert _plan_environment_variables(tmp_path / "good", {name: pem})[0] == 0
    code, output = _plan_environment_variables(tmp_path / "name", {"signer.pub": pem})
    assert code != 0 and "<keyid>.pub" in output, output
    private = SigningKey.generate().private_pem().decode()
    code, output = _plan_environment_variables(tmp_path / "private", {name: private})
    assert code != 0 and "never a private key" in output, output
