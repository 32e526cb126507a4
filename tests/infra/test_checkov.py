"""checkov over the Terraform, the rendered Kubernetes overlays and the Dockerfile: no failed
check. A check may be skipped only in the code, next to the resource, with its written reason."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .tools import (
    ENVIRONMENTS,
    INFRA,
    TERRAFORM_DIR,
    TOOL_TIMEOUT_S,
    find_checkov,
    find_kubectl,
    render_overlay,
)

CHECKOV, NO_CHECKOV = find_checkov()
KUBECTL, NO_KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(CHECKOV is None, reason=NO_CHECKOV)

# A skip names a check and gives a reason of a few words at least.
SKIP_WITH_REASON = re.compile(r"checkov:skip=(CKV\w*_\d+):\s*(\S.{15,})")
SKIP_ANY = re.compile(r"checkov:skip=")


def run_checkov(*args: str) -> list[dict[str, Any]]:
    assert CHECKOV is not None
    result = subprocess.run(
        [CHECKOV, "--skip-download", "--quiet", "--compact", "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]


def skipped(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        check for report in reports for check in report.get("results", {}).get("skipped_checks", [])
    ]


def assert_clean(reports: list[dict[str, Any]]) -> None:
    assert reports, "checkov reported nothing"
    passed = sum(report.get("summary", {}).get("passed", 0) for report in reports)
    assert passed > 0, "checkov ran no check"
    assert not failures(reports), "\n".join(failures(reports))
    for check in skipped(reports):
        assert len(check.get("suppress_comment", "").strip()) >= 15, (
            f"{check['check_id']} skipped without a reason in {check['file_path']}"
        )


def test_terraform_has_no_failed_check() -> None:
    assert_clean(run_checkov("-d", str(TERRAFORM_DIR), "--framework", "terraform"))


def test_dockerfile_has_no_failed_check() -> None:
    assert_clean(
        run_checkov("-f", str(INFRA / "docker" / "Dockerfile"), "--framework", "dockerfile")
    )


@pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)
def test_rendered_kubernetes_overlays_have_no_failed_check(tmp_path: Path) -> None:
    assert KUBECTL is not None
    for overlay in ENVIRONMENTS:
        (tmp_path / f"{overlay}.yaml").write_text(render_overlay(KUBECTL, overlay))
    assert_clean(run_checkov("-d", str(tmp_path), "--framework", "kubernetes"))


def test_every_skip_in_the_code_carries_a_reason() -> None:
    sources = [
        path
        for path in INFRA.rglob("*")
        if path.is_file() and path.suffix in {".tf", ".yaml", ".yml", ""}
    ]
    found = 0
    for path in sources:
        for line in path.read_text(errors="replace").splitlines():
            if SKIP_ANY.search(line):
                found += 1
                assert SKIP_WITH_REASON.search(line), (
                    f"{path}: skip without a reason: {line.strip()}"
                )
    assert found, "expected the documented skips to be found"
