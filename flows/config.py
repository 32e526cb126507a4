"""`gantry.toml`: the contract between Gantry and a service repository.

The file is parsed into strict pydantic models so that a typo (``lnit = [...]``) or a shell
string where an argv list belongs is refused up front, with the file, the key and what was
expected, instead of surfacing as a confusing step failure later.
"""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_FILE = "gantry.toml"
CHECK_STAGES: tuple[str, ...] = ("lint", "static", "unit", "integration")
Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_ORDER: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}

# An argv list: at least the program, every element a string. A bare string is refused on
# purpose: it would need a shell to split it, and untrusted text must never reach a shell.
Argv = Annotated[list[str], Field(min_length=1)]


class ConfigError(ValueError):
    """gantry.toml is missing, not TOML, or does not match the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def inside_the_checkout(value: str) -> str:
    """``value`` unchanged if it is a relative path that stays inside the checkout (lexically)."""
    path = PurePosixPath(value)
    if (
        not value.strip()
        or "\0" in value
        or path.is_absolute()
        or PureWindowsPath(value).is_absolute()
        or value.startswith("~")
    ):
        raise ValueError(f"{value!r} must be a relative path inside the repository")
    if ".." in path.parts or ".." in PureWindowsPath(value).parts:
        raise ValueError(f"{value!r} must not contain '..': it stays inside the repository")
    return value


# What a step's sandbox may reach: "none" (its own loopback only, the default) or "outside"
# (the internet, never the host's loopback services nor the cloud metadata address). E2E and
# smoke always get "target" (the environment under test) in addition to what they declare.
StepNetwork = Literal["none", "outside"]


# The machine-readable reports Gantry turns into check-run annotations (flows/steps/annotations.py).
ReportFormat = Literal["ruff", "mypy", "junit"]


class Report(_Strict):
    """A check's report: ``report = {format = "ruff", path = "ruff.json"}``.

    The step writes it into the checkout; Gantry deletes any file at ``path`` before the step
    runs and reads it afterwards, so the path must name a file inside the checkout, and never
    one in ``.git`` (the trusted side reads that repository).
    """

    format: ReportFormat
    path: str

    @field_validator("path")
    @classmethod
    def _a_file_inside_the_checkout(cls, value: str) -> str:
        inside_the_checkout(value)
        parts = PurePosixPath(value.replace("\\", "/")).parts
        if not parts or value.endswith(("/", "\\")):
            raise ValueError(f"{value!r} must name a file inside the repository")
        if ".git" in parts:
            raise ValueError(f"{value!r} must not be inside .git")
        return value


class CheckStep(_Strict):
    """One check declared as a table: ``[checks.unit] command = [...] timeout = 120``."""

    command: Argv
    timeout: float | None = Field(default=None, gt=0)
    inputs: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    network: StepNetwork = "none"
    report: Report | None = None

    @field_validator("command")
    @classmethod
    def _program_not_empty(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first element (the program) must not be empty")
        return value


class Checks(_Strict):
    """``[checks]``: each stage is an argv list, or a table with command/timeout/inputs."""

    timeout: float = Field(default=900.0, gt=0)
    lint: CheckStep | None = None
    static: CheckStep | None = None
    unit: CheckStep | None = None
    integration: CheckStep | None = None

    @field_validator("lint", "static", "unit", "integration", mode="before")
    @classmethod
    def _argv_shorthand(cls, value: object) -> object:
        # `lint = ["ruff", "check"]` is shorthand for `[checks.lint] command = [...]`.
        if isinstance(value, list):
            return {"command": value}
        if isinstance(value, str):
            raise ValueError(
                "a shell string is not accepted; "
                'expected an argv list such as ["ruff", "check", "."]'
            )
        return value

    def step(self, name: str) -> CheckStep | None:
        """The declared step ``name``, or None when it is not declared."""
        value: CheckStep | None = getattr(self, name)
        return value

    def timeout_for(self, name: str) -> float:
        step = self.step(name)
        if step is not None and step.timeout is not None:
            return step.timeout
        return self.timeout


class Image(_Strict):
    """``[[images]]``: one image built from the checkout."""

    name: str = Field(pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=128)
    context: str = "."
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = Field(default_factory=dict)
    inputs: list[str] | None = None
    # Where the container listens and answers its health check, for local deploy targets.
    port: int = Field(default=8000, ge=1, le=65535)
    health_path: str = "/healthz"


class Deploy(_Strict):
    """``[deploy]``: kustomize base and overlays/<environment> under ``manifests``."""

    manifests: str = "deploy"
    timeout: float = Field(default=300.0, gt=0)

    @field_validator("manifests")
    @classmethod
    def _inside_the_checkout(cls, value: str) -> str:
        # Lexically here; the deploy stage resolves symlinks against the checkout itself.
        return inside_the_checkout(value)


class E2E(_Strict):
    """``[e2e]``: the end-to-end command, run with GANTRY_TARGET_URL set."""

    command: Argv
    timeout: float = Field(default=900.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    network: StepNetwork = "none"


class Smoke(_Strict):
    """``[smoke]``: a lighter check against production; defaults to the E2E command."""

    command: Argv
    timeout: float = Field(default=300.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    network: StepNetwork = "none"


class Sandbox(_Strict):
    """``[sandbox]``: the toolchain and limits every step of this repository runs with."""

    # None: the default toolchain (Python 3, git, the usual build tools). An image reference
    # names the service's own toolchain (the kubernetes runner runs it; the local one refuses).
    image: str | None = Field(default=None, min_length=1)
    cpus: float = Field(default=2.0, gt=0, le=64)
    memory_mb: int = Field(default=2048, ge=64, le=262144)
    processes: int = Field(default=512, ge=8, le=65536)


class Scan(_Strict):
    """``[scan]``: dependency manifests sent to the vulnerability service."""

    fail_on: Severity = "high"
    manifests: list[str] | None = None
    timeout: float = Field(default=300.0, gt=0)


class GantryConfig(_Strict):
    """The whole of ``gantry.toml``."""

    checks: Checks = Field(default_factory=Checks)
    images: list[Image] = Field(default_factory=list)
    deploy: Deploy | None = None
    e2e: E2E | None = None
    smoke: Smoke | None = None
    scan: Scan = Field(default_factory=Scan)
    sandbox: Sandbox = Field(default_factory=Sandbox)

    @field_validator("images")
    @classmethod
    def _unique_image_names(cls, value: list[Image]) -> list[Image]:
        names = [image.name for image in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"image names must be unique, repeated: {', '.join(duplicates)}")
        return value


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc", ())
    parts = [str(p) for p in loc] if isinstance(loc, tuple) else []
    # The argv shorthand is validated as `command`; name the key the user wrote.
    kind = str(error.get("type", ""))
    if parts[-1:] == ["command"] and len(parts) == 3 and parts[0] == "checks" and kind != "missing":
        parts = parts[:2]
    location = ".".join(parts) or "<root>"
    report = parts[:1] == ["checks"] and parts[2:3] == ["report"]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "missing (required)"
    elif kind in {"model_type", "dict_type"} and report:
        message = 'expected a table such as {format = "ruff", path = "ruff.json"}'
    elif kind in {"model_type", "dict_type"}:
        message = "expected an argv list of strings or a table"
    if report:
        # The argv hint below is about commands, not reports.
        return f"{location}: {message}"
    if "expected" not in message and ("command" in parts or parts[:1] == ["checks"]):
        message = f'{message}; expected an argv list of strings such as ["pytest", "-q"]'
    return f"{location}: {message}"


def parse_config(text: str, source: str = CONFIG_FILE) -> GantryConfig:
    """Parse the text of a gantry.toml; ``source`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return GantryConfig.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(_describe(dict(err)) for err in exc.errors())
        raise ConfigError(f"{source}: {details}") from None


def load_config(root: Path) -> GantryConfig:
    """Read ``gantry.toml`` at the root of a checkout."""
    path = root / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{CONFIG_FILE}: not found at the repository root") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE}: not UTF-8 text: {exc}") from exc
    return parse_config(text, CONFIG_FILE)
