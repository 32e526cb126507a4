"""Terraform's own checks: formatting, and init + validate + `terraform test` per module.

Modules using only the AWS provider are initialised from the local provider mirror and run for
real; their `terraform test` files use `mock_provider "aws"`, so nothing reaches AWS.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .tools import (
    AWS_ONLY_MODULES,
    AWS_PROVIDER_MIRROR,
    MODULES_DIR,
    PARSED_ONLY_MODULES,
    TERRAFORM_DIR,
    Terraform,
    find_terraform,
    terraform_env,
)

TERRAFORM, NO_TERRAFORM = find_terraform()
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason=NO_TERRAFORM)
needs_mirror = pytest.mark.skipif(
    not AWS_PROVIDER_MIRROR.is_dir(),
    reason=f"no AWS provider mirror at {AWS_PROVIDER_MIRROR}: providers cannot be downloaded",
)


def _terraform() -> Terraform:
    assert TERRAFORM is not None
    return TERRAFORM


@needs_terraform
def test_every_terraform_file_is_canonically_formatted(tmp_path: Path) -> None:
    result = _terraform().run(
        TERRAFORM_DIR,
        "fmt",
        "-check",
        "-recursive",
        "-diff",
        "-no-color",
        env=terraform_env(tmp_path),
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def test_every_module_is_either_validated_or_parsed() -> None:
    on_disk = {path.name for path in MODULES_DIR.iterdir() if path.is_dir()}
    assert on_disk == set(AWS_ONLY_MODULES) | set(PARSED_ONLY_MODULES)


@needs_terraform
@needs_mirror
@pytest.mark.parametrize("module", AWS_ONLY_MODULES)
def test_aws_module_initialises_validates_and_passes_its_terraform_tests(
    module: str, tmp_path: Path
) -> None:
    # A copy keeps .terraform and the lock file out of the source tree.
    workdir = tmp_path / module
    shutil.copytree(MODULES_DIR / module, workdir)
    env = terraform_env(tmp_path)
    terraform = _terraform()

    init = terraform.run(workdir, "init", "-backend=false", "-input=false", "-no-color", env=env)
    assert init.returncode == 0, init.stdout + init.stderr

    validate = terraform.run(workdir, "validate", "-no-color", env=env)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    assert list((workdir / "tests").glob("*.tftest.hcl")), f"{module} has no terraform test"
    tests = terraform.run(workdir, "test", "-no-color", env=env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " 0 failed" in tests.stdout, tests.stdout
