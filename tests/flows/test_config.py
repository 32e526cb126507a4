from pathlib import Path

import pytest

from flows.config import ConfigError, load_config, parse_config

SKETCH = """
[checks]
lint = ["ruff", "check", "."]
static = ["mypy", "src"]
unit = ["pytest", "-q", "tests/unit"]
integration = ["pytest", "-q", "tests/integration"]

[[images]]
name = "api"
context = "."
dockerfile = "Dockerfile"

[deploy]
manifests = "deploy"

[e2e]
command = ["pytest", "-q", "tests/e2e"]

[scan]
fail_on = "high"
"""


def test_the_design_sketch_parses_into_typed_models() -> None:
    config = parse_config(SKETCH)
    lint = config.checks.step("lint")
    assert lint is not None
    assert lint.command == ["ruff", "check", "."]
    assert config.images[0].name == "api"
    assert config.deploy is not None and config.deploy.manifests == "deploy"
    assert config.e2e is not None and config.e2e.command[0] == "pytest"
    assert config.scan.fail_on == "high"


def test_an_undeclared_check_is_none_not_a_pass() -> None:
    config = parse_config('[checks]\nlint = ["ruff"]\n')
    assert config.checks.step("unit") is None


def test_per_step_timeout_overrides_the_default() -> None:
    config = parse_config(
        '[checks]\ntimeout = 60\nlint = ["ruff"]\nunit = {command = ["pytest"], timeout = 5}\n'
    )
    assert config.checks.timeout_for("unit") == 5
    assert config.checks.timeout_for("lint") == 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[checks]\nlnit = ["ruff"]\n', "checks.lnit: unknown key"),
        ('[checks]\nlint = "ruff check ."\n', "checks.lint: a shell string is not accepted"),
        ("[checks]\nlint = []\n", "checks.lint: List should have at least 1 item"),
        ("[checks]\nlint = [1, 2]\n", "checks.lint.command.0: Input should be a valid string"),
        ("[checks]\nunit = {timeout = 3}\n", "checks.unit.command: missing (required)"),
        ('[checks]\nlint = [""]\n', "checks.lint: the first element (the program) must not"),
        ('[checks]\ntimeout = "soon"\n', "checks.timeout: Input should be a valid number"),
        ('[[images]]\ncontext = "."\n', "images.0.name: missing (required)"),
        ('[scan]\nfail_on = "severe"\n', "scan.fail_on: Input should be 'low', 'medium'"),
        ('[e2e]\ncommand = "pytest"\n', "e2e.command: Input should be a valid list"),
        ("[checks\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_file_and_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gantry.toml")
    message = str(caught.value)
    assert message.startswith("gantry.toml: ")
    assert expected in message


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gantry\.toml: not found at the repository root"):
        load_config(tmp_path)


def test_duplicate_image_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="repeated: api"):
        parse_config('[[images]]\nname = "api"\n[[images]]\nname = "api"\n')


def test_sandbox_table_and_network_keys_parse_with_defaults() -> None:
    config = parse_config(
        '[checks.unit]\ncommand = ["pytest"]\nnetwork = "outside"\n'
        '[e2e]\ncommand = ["pytest", "e2e"]\n'
        "[sandbox]\ncpus = 1.5\nmemory_mb = 1024\nprocesses = 128\n"
    )
    assert config.checks.unit is not None and config.checks.unit.network == "outside"
    assert config.e2e is not None and config.e2e.network == "none"
    assert (config.sandbox.cpus, config.sandbox.memory_mb, config.sandbox.processes) == (
        1.5,
        1024,
        128,
    )
    assert parse_config("").sandbox.image is None


def test_unknown_network_value_is_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"checks\.lint"):
        parse_config('[checks.lint]\ncommand = ["ruff"]\nnetwork = "host"\n')


@pytest.mark.parametrize(
    ("manifests", "expected"),
    [
        ("/etc", "must be a relative path inside the repository"),
        ("~/deploy", "must be a relative path inside the repository"),
        ("", "must be a relative path inside the repository"),
        ("../other-service/deploy", "must not contain '..'"),
        ("deploy/../../outside", "must not contain '..'"),
    ],
)
def test_deploy_manifests_must_stay_inside_the_repository(manifests: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"deploy.manifests: .*{expected}"):
        parse_config(f"[deploy]\nmanifests = {manifests!r}\n")


def test_a_nested_relative_manifests_path_is_accepted() -> None:
    config = parse_config('[deploy]\nmanifests = "infra/k8s"\n')
    assert config.deploy is not None
    assert config.deploy.manifests == "infra/k8s"


def test_a_check_declares_its_report_as_a_table() -> None:
    config = parse_config(
        '[checks.lint]\ncommand = ["ruff", "check"]\n'
        'report = {format = "ruff", path = "reports/ruff.json"}\n'
    )
    lint = config.checks.lint
    assert lint is not None and lint.report is not None
    assert (lint.report.format, lint.report.path) == ("ruff", "reports/ruff.json")
    assert parse_config('[checks]\nlint = ["ruff"]\n').checks.lint.report is None  # type: ignore[union-attr]


REPORT_PREFIX = '[checks.lint]\ncommand = ["ruff"]\nreport = '


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (
            '{format = "eslint", path = "r.json"}',
            "format: Input should be 'ruff', 'mypy' or 'junit'",
        ),
        ('{format = "ruff", path = "/tmp/r.json"}', "path: '/tmp/r.json' must be a relative path"),
        ('{format = "ruff", path = "~/r.json"}', "path: '~/r.json' must be a relative path"),
        ('{format = "ruff", path = "../r.json"}', "path: '../r.json' must not contain '..'"),
        ('{format = "ruff", path = "a/../../r.json"}', "must not contain '..'"),
        ('{format = "ruff", path = "C:\\\\r.json"}', "must be a relative path"),
        ('{format = "ruff", path = ".git/HEAD"}', "path: '.git/HEAD' must not be inside .git"),
        ('{format = "ruff", path = "."}', "path: '.' must name a file"),
        ('{format = "ruff", path = "reports/"}', "path: 'reports/' must name a file"),
        ('{format = "ruff"}', "report.path: missing (required)"),
        ('{format = "ruff", path = "r.json", kind = "x"}', "report.kind: unknown key"),
        ('{format = "ruff", path = 3}', "report.path: Input should be a valid string"),
        ('"ruff.json"', 'report: expected a table such as {format = "ruff", path = "ruff.json"}'),
    ],
)
def test_a_bad_report_is_a_clear_error_naming_the_key(report: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(REPORT_PREFIX + report + "\n")
    message = str(caught.value)
    assert message.startswith("gantry.toml: checks.lint.report")
    assert expected in message
    # The argv hint is about commands; a report error must not send people there.
    assert "argv" not in message
