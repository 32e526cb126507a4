"""The control plane: the Prefect API needs the stack's credential, which `gantry env` hands to
Prefect's own CLI, and the state folder that keeps it is private."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from core.ports import free_port
from core.redact import MASK, redact
from core.settings import PREFECT_AUTH_FILE, StackSettings, prefect_env
from core.statefiles import SecretFileError, secret_file, secure_state_folder
from deployments.stack import Stack
from tests.plugins.stack import GANTRY, stack_environment

BIN_DIR = str(Path(GANTRY).parent)
# Quotes, a command substitution and a space: `gantry env` must hand them to the shell as data.
HOSTILE_AUTH = 'ops:it\'s $(touch pwned) "quoted"; `id` and more'


def clean_env(extra: Mapping[str, str], tmp_path: Path) -> dict[str, str]:
    """The test process's environment without its Prefect and Gantry settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GANTRY_"))}
    env["PATH"] = os.pathsep.join([BIN_DIR, env.get("PATH", os.defpath)])
    # Prefect's CLI reads no profile of this machine, and never starts a server of its own.
    env["PREFECT_HOME"] = str(tmp_path / "prefect-cli-home")
    env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    env.update(extra)
    return env


def run(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


# -- the API refuses callers without the credential ---------------------------------------


@pytest.mark.slow
def test_the_prefect_api_refuses_a_caller_without_the_credential_but_answers_health(
    local_stack: Stack,
) -> None:
    api = local_stack.settings.prefect_api_url
    user, _, password = local_stack.settings.api_auth_string().partition(":")
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    assert httpx.get(f"{api}/ready", timeout=10).status_code == 200
    filter_runs = f"{api}/flow_runs/filter"
    assert httpx.post(filter_runs, json={}, timeout=10).status_code == 401
    wrong = httpx.post(filter_runs, json={}, auth=(user, password + "x"), timeout=10)
    assert wrong.status_code == 401
    right = httpx.post(filter_runs, json={}, auth=(user, password), timeout=10)
    assert right.status_code == 200


@pytest.mark.slow
def test_eval_gantry_env_lets_prefects_own_cli_reach_the_stack(
    local_stack: Stack, tmp_path: Path
) -> None:
    env = clean_env(stack_environment(local_stack.settings), tmp_path)
    script = 'eval "$(gantry env)" && prefect flow-run ls'
    result = run(["bash", "-c", script], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the eval, the same CLI pointed at the same server is refused.
    bare = {**env, "PREFECT_API_URL": local_stack.settings.prefect_api_url}
    refused = run(["bash", "-c", "prefect flow-run ls"], bare, tmp_path)
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr or "Unauthorized" in refused.stderr


@pytest.mark.slow
def test_gantry_status_json_never_prints_the_credential(local_stack: Stack, tmp_path: Path) -> None:
    env = clean_env(stack_environment(local_stack.settings), tmp_path)
    result = run([GANTRY, "status", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parts"]["prefect-server"]["up"] is True
    auth = local_stack.settings.api_auth_string()
    token = base64.b64encode(auth.encode()).decode()
    for secret in (auth, auth.partition(":")[2], token):
        assert secret not in result.stdout + result.stderr


@pytest.mark.slow
def test_every_process_of_the_stack_and_every_log_line_keeps_the_credential_masked(
    local_stack: Stack,
) -> None:
    auth = local_stack.settings.api_auth_string()
    password = auth.partition(":")[2]
    assert prefect_env(local_stack.settings)["PREFECT_API_AUTH_STRING"] == auth
    logs = local_stack.settings.state_dir / "run"
    texts = [path.read_text(errors="replace") for path in logs.glob("*.log")]
    assert texts and not any(password in text for text in texts)


# -- gantry env -----------------------------------------------------------------------------


def test_gantry_env_quotes_each_value_for_the_shell(tmp_path: Path) -> None:
    env = clean_env(
        {"GANTRY_HOME": str(tmp_path / "state"), "GANTRY_PREFECT_AUTH_STRING": HOSTILE_AUTH},
        tmp_path,
    )
    printed = run([GANTRY, "env"], env, tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert [line.split("=", 1)[0] for line in printed.stdout.splitlines()] == [
        "export PREFECT_API_URL",
        "export PREFECT_API_AUTH_STRING",
    ]
    script = (
        'eval "$(gantry env)" && printf "%s\\n%s" "$PREFECT_API_URL" "$PREFECT_API_AUTH_STRING"'
    )
    result = run(["bash", "-c", script], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["http://127.0.0.1:4200/api", *HOSTILE_AUTH.splitlines()]
    assert not (tmp_path / "pwned").exists()


def test_gantry_env_json_is_one_object_and_the_generated_credential_is_kept(
    tmp_path: Path,
) -> None:
    env = clean_env({"GANTRY_HOME": str(tmp_path / "state")}, tmp_path)
    first = json.loads(run([GANTRY, "env", "--json"], env, tmp_path).stdout)
    second = json.loads(run([GANTRY, "env", "--json"], env, tmp_path).stdout)
    assert first == second
    user, colon, password = first["PREFECT_API_AUTH_STRING"].partition(":")
    assert user and colon and len(password) >= 32
    path = tmp_path / "state" / PREFECT_AUTH_FILE
    assert path.read_text().strip() == first["PREFECT_API_AUTH_STRING"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_operator_credential_not_shaped_user_password_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = "no-colon-in-this-credential"
    monkeypatch.setenv("GANTRY_PREFECT_AUTH_STRING", given)
    with pytest.raises(ValidationError, match="user:password") as refused:
        StackSettings()
    assert given not in str(refused.value)


def test_the_credential_is_masked_in_text_once_loaded(tmp_path: Path) -> None:
    auth = StackSettings(home=tmp_path).api_auth_string()
    token = base64.b64encode(auth.encode()).decode()
    password = auth.partition(":")[2]
    text = redact(f"env PREFECT_API_AUTH_STRING={auth} header Basic {token} pw {password}")
    assert auth not in text and token not in text and password not in text
    assert MASK in text


# -- the state folder -----------------------------------------------------------------------


def test_secret_file_is_written_0600_once_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "demo-secret"
    old = os.umask(0)
    try:
        assert secret_file(path, lambda: "first-value") == "first-value"
    finally:
        os.umask(old)
    assert secret_file(path, lambda: "second-value") == "first-value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["demo-secret"]  # no temporary left


def test_up_makes_what_gantry_created_private_again_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GANTRY_WEBHOOK_SECRET", raising=False)  # generated into the folder
    home = tmp_path / "state"
    stack = Stack(StackSettings(home=home))
    stack.secure_state()
    (home / "signing.key").write_text("a key a later part keeps here\n")
    (home / "demo").mkdir()
    (home / "demo" / "approver_ed25519").write_text("an SSH private key\n")
    modes = {
        "webhook-secret": 0o644,
        PREFECT_AUTH_FILE: 0o640,
        "signing.key": 0o604,
        "demo/approver_ed25519": 0o644,
    }
    for name, mode in modes.items():
        (home / name).chmod(mode)
    home.chmod(0o755)
    warnings: list[str] = []
    stack.secure_state(warnings.append)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in modes:
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert len(warnings) == 5 and all("changed to 0" in w for w in warnings)
    # Nothing left to fix: a second check is silent.
    assert secure_state_folder(home) == []


def test_gantry_up_refuses_a_secret_file_others_can_read_and_it_cannot_fix(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    leaked = home / "webhook-secret"
    leaked.write_text("someone else's secret\n")
    leaked.chmod(0o644)
    os.chown(leaked, 65534, 65534)  # nobody's file: not Gantry's to change
    settings = StackSettings(
        home=home, prefect_port=free_port(), webhook_port=free_port(), registry_port=free_port()
    )
    env = clean_env(stack_environment(settings), tmp_path)
    try:
        result = run([GANTRY, "up"], env, tmp_path)
    finally:  # were the refusal gone, the stack this started would not outlive the test
        Stack(settings).down(purge=True)
    assert result.returncode == 2
    said = result.stderr.replace("\n", "")  # rich wraps the message at the terminal's width
    assert "webhook-secret is 0644" in said and "other users can read it" in said
    assert stat.S_IMODE(leaked.stat().st_mode) == 0o644
    assert not (home / "run").exists()  # refused before anything started


def test_a_secret_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.write_text("not a secret of ours\n")
    outside.chmod(0o644)
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    (home / PREFECT_AUTH_FILE).symlink_to(outside)
    with pytest.raises(SecretFileError, match="symbolic link"):
        secure_state_folder(home)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
