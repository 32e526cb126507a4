"""Image steps: build every ``[[images]]`` entry of a checkout, and push them by digest.

Images are tagged ``<registry or localhost>/<repository slug>/<name>:<sha>``. Build output is
streamed into the run log line by line as the engine produces it. A push is only trusted once
the registry itself names the digest the engine reported. Errors of the Docker Engine API come
back inside its response streams (not as exceptions), so every stream item is checked.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import docker
from docker.errors import DockerException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect_docker import DockerRegistryCredentials

from blocks.containers import auth_config, docker_client, load_registry_credentials
from clients.base_image import BASE_IMAGE, BaseImageError, ensure_base_image
from clients.registry import RegistryAuthError, RegistryClient, RegistryUnavailable
from clients.retry import RetryPolicy, retry_call
from flows.config import Image
from flows.logs import StepLogger, step_logger
from flows.results import StageResult, StageStatus, stage_state

LOCAL_PREFIX = "localhost"
SLUG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
STEP_LINE = re.compile(r"^(?:STEP|Step) \d+/\d+ ?: ?(.+)$")
PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
AUTH_ERROR = re.compile(
    r"unauthori[sz]ed|authentication required|access to the resource is denied|"
    r"\b401\b|\b403\b|forbidden",
    re.IGNORECASE,
)
TRANSIENT_ERROR = re.compile(
    r"connection refused|connection reset|broken pipe|i/o timeout|timed out|timeout|"
    r"\bEOF\b|\b50[0234]\b|service unavailable|bad gateway|gateway timeout|too many requests",
    re.IGNORECASE,
)
# Rides out a registry restarting or briefly overloaded: five tries, under 15 s of waiting.
PUSH_POLICY = RetryPolicy(attempts=5, backoff=1.0, backoff_cap=10.0, max_wait=40.0)


class ImageError(RuntimeError):
    """An image step could not do its work."""


class ForkPushRefused(ImageError):
    """A pull request from a fork asked to push: fork runs never push."""


class PushAuthError(ImageError):
    """The registry refused our credentials; retrying will not help."""


class _TransientPushError(ImageError):
    pass


def image_reference(prefix: str, repository_slug: str, name: str, tag: str) -> str:
    return f"{prefix}/{repository_slug}/{name}:{tag}"


def _in_context() -> Callable[..., Any]:
    # Each worker thread runs in a copy of the caller's context, so the run logger still knows
    # its flow and task run (one copy per thread: a context cannot be entered twice at once).
    return contextvars.copy_context().run


def _connect(docker_host: str | None) -> docker.DockerClient:
    try:
        return docker_client(docker_host)
    except DockerException as exc:
        where = docker_host or "DOCKER_HOST"
        raise ImageError(f"the container engine at {where} cannot be reached: {exc}") from exc


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ImageError(f"{what} {relative!r} points outside the checkout")
    return path


def _needs_local_base(checkout: Path, image: Image) -> bool:
    try:
        context = _inside(checkout, image.context, "context")
        dockerfile = _inside(context, image.dockerfile, "dockerfile")
        return BASE_IMAGE in dockerfile.read_text(errors="replace")
    except (ImageError, OSError):
        return False


def _build_one(
    client: docker.DockerClient, checkout: Path, image: Image, ref: str, logger: StepLogger
) -> dict[str, str]:
    """Build one image, streaming its output; returns its reference and image id."""
    context = _inside(checkout, image.context, "context")
    # As in compose files, the Dockerfile is named relative to the build context.
    dockerfile = _inside(context, image.dockerfile, "dockerfile")
    if not dockerfile.is_file():
        raise ImageError(
            f"{image.name}: no Dockerfile at {image.dockerfile!r} in {image.context!r}"
        )
    step = ""
    image_id = ""
    tail: list[str] = []
    stream = client.api.build(
        path=str(context),
        dockerfile=str(dockerfile.relative_to(context)),
        tag=ref,
        rm=True,
        forcerm=True,
        decode=True,
        buildargs=dict(image.build_args) or None,
    )
    for item in stream:
        if "error" in item or "errorDetail" in item:
            message = str(item.get("error") or item.get("errorDetail", {}).get("message", ""))
            where = f" at `{step}`" if step and step not in message else ""
            raise ImageError(f"{image.name}: build failed{where}: {message.strip()}")
        for line in str(item.get("stream", "")).splitlines():
            if not line.strip():
                continue
            logger.info("[%s] %s", image.name, line)
            tail = [*tail[-19:], line]
            found = STEP_LINE.match(line.strip())
            if found:
                step = found.group(1).strip()
        aux = item.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
    if not image_id:
        image_id = str(client.images.get(ref).id)
    return {"ref": ref, "id": image_id}


def build_all(
    checkout: Path,
    images: list[Image],
    tag: str,
    docker_host: str,
    repository_slug: str,
    registry: str | None = None,
    logger: StepLogger | None = None,
) -> StageResult:
    """Build every image concurrently; the stage fails if any build fails, naming each."""
    log = logger or step_logger("images")
    started = time.monotonic()
    if not images:
        return StageResult(name="build", status=StageStatus.SKIPPED, detail="no [[images]]")
    if not SLUG.match(repository_slug) or not TAG.match(tag):
        detail = f"not a valid image repository or tag: {repository_slug!r}, {tag!r}"
        return StageResult(name="build", status=StageStatus.FAILED, detail=detail)
    prefix = registry or LOCAL_PREFIX
    built: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    try:
        connected = _connect(docker_host)
    except ImageError as exc:
        return StageResult(name="build", status=StageStatus.FAILED, detail=str(exc))
    with connected as client:
        try:
            if any(_needs_local_base(checkout, i) for i in images):
                ensure_base_image(client)
        except BaseImageError as exc:
            failures.append(f"base image: {exc}")
        refs = {i.name: image_reference(prefix, repository_slug, i.name, tag) for i in images}
        with ThreadPoolExecutor(max_workers=min(4, len(images))) as pool:
            futures = {
                i.name: pool.submit(
                    _in_context(), _build_one, client, checkout, i, refs[i.name], log
                )
                for i in images
                if not failures
            }
            for name, future in futures.items():
                try:
                    built[name] = {
                        **future.result(),
                        "path": f"{repository_slug}/{name}",
                        "tag": tag,
                    }
                except (ImageError, DockerException) as exc:
                    failures.append(str(exc) if isinstance(exc, ImageError) else f"{name}: {exc}")
    seconds = round(time.monotonic() - started, 3)
    data: dict[str, Any] = {"images": built, "docker_host": docker_host}
    if failures:
        detail = "; ".join(failures)
        log.error("image build failed: %s", detail)
        return StageResult(
            name="build", status=StageStatus.FAILED, seconds=seconds, detail=detail, data=data
        )
    log.info("built %s in %.1f s", ", ".join(b["ref"] for b in built.values()), seconds)
    return StageResult(name="build", status=StageStatus.PASSED, seconds=seconds, data=data)


def _check_stream(items: Iterable[dict[str, Any]], logger: StepLogger, name: str) -> str | None:
    """Read a push stream to its end; returns the digest it reports, raises on an error item."""
    digest: str | None = None
    for item in items:
        if "error" in item or "errorDetail" in item:
            message = str(item.get("error") or item.get("errorDetail", {}).get("message", ""))
            _raise_push_error(name, message)
        status = str(item.get("status", ""))
        if status:
            logger.info("[%s] %s", name, status)
        found = PUSHED_DIGEST.search(status)
        aux = item.get("aux")
        if isinstance(aux, dict) and str(aux.get("Digest", "")).startswith("sha256:"):
            digest = str(aux["Digest"])
        elif found:
            digest = found.group(1)
    return digest


def _raise_push_error(name: str, message: str) -> NoReturn:
    message = message.strip()
    if AUTH_ERROR.search(message):
        # The engine's message chains every layer; the root cause is its last part.
        cause = message.rsplit(": ", 2)[-2:]
        raise PushAuthError(
            f"{name}: the registry refused the credentials ({': '.join(cause)}); check the "
            f"registry credentials block. Engine said: {message}"
        )
    if TRANSIENT_ERROR.search(message):
        raise _TransientPushError(f"{name}: {message}")
    raise ImageError(f"{name}: push failed: {message}")


def _push_transient(exc: Exception) -> bool:
    # What a registry (or the engine's way to it) may answer differently a moment later; a
    # refusal of our credentials or a digest mismatch will not change by trying again.
    return isinstance(exc, _TransientPushError | RegistryUnavailable)


def _push_one(
    client: docker.DockerClient,
    registry: RegistryClient,
    registry_address: str,
    name: str,
    entry: dict[str, str],
    auth: dict[str, str] | None,
    policy: RetryPolicy,
    logger: StepLogger,
) -> dict[str, str]:
    repository = f"{registry_address}/{entry['path']}"
    tag = entry["tag"]
    client.api.tag(entry.get("id") or entry["ref"], repository, tag)
    tries = 0

    def attempt() -> tuple[str | None, str]:
        nonlocal tries
        tries += 1
        try:
            stream = client.api.push(
                repository, tag=tag, stream=True, decode=True, auth_config=auth
            )
            reported = _check_stream(stream, logger, name)
        except DockerException as exc:
            _raise_push_error(name, str(exc))
        return reported, registry.manifest_digest(entry["path"], tag)

    try:
        reported, actual = retry_call(
            attempt,
            transient=_push_transient,
            policy=policy,
            what=f"[{name}] push to {registry_address}",
            logger=logger,
        )
    except RegistryAuthError as exc:
        raise PushAuthError(f"{name}: {exc}") from exc
    except (_TransientPushError, RegistryUnavailable) as exc:
        raise ImageError(
            f"{name}: push to {registry_address} failed after {tries} attempts: {exc}"
        ) from exc
    if reported is not None and reported != actual:
        raise ImageError(f"{name}: the engine reported {reported} but the registry serves {actual}")
    return {
        "ref": f"{repository}:{tag}",
        "repository": repository,
        "digest": actual,
        "pinned": f"{repository}@{actual}",
    }


def push_all(
    built: StageResult,
    registry: str,
    credentials: DockerRegistryCredentials | None = None,
    *,
    docker_host: str | None = None,
    fork: bool = False,
    policy: RetryPolicy = PUSH_POLICY,
    logger: StepLogger | None = None,
) -> StageResult:
    """Push every built image to ``registry`` and record the digest the registry serves."""
    if fork:
        raise ForkPushRefused("a pull request from a fork never pushes images")
    log = logger or step_logger("push")
    started = time.monotonic()
    if not built.ok:
        return StageResult(name="push", status=StageStatus.FAILED, detail="the build failed")
    images: dict[str, dict[str, str]] = dict(built.data.get("images", {}))
    host = docker_host or str(built.data.get("docker_host", ""))
    if not images:
        return StageResult(name="push", status=StageStatus.SKIPPED, detail="no images built")
    auth = auth_config(credentials) if credentials is not None else None
    reader = RegistryClient(
        registry,
        credentials.username if credentials is not None else None,
        credentials.password if credentials is not None else None,
    )
    pushed: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    try:
        connected = _connect(host or None)
    except ImageError as exc:
        return StageResult(name="push", status=StageStatus.FAILED, detail=str(exc))
    with connected as client, ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(
                _in_context(), _push_one, client, reader, registry, name, entry, auth, policy, log
            )
            for name, entry in images.items()
        }
        for name, future in futures.items():
            try:
                pushed[name] = future.result()
            except (ImageError, DockerException) as exc:
                failures.append(str(exc) if isinstance(exc, ImageError) else f"{name}: {exc}")
    seconds = round(time.monotonic() - started, 3)
    data = {"images": pushed, "registry": registry}
    if failures:
        detail = "; ".join(failures)
        log.error("image push failed: %s", detail)
        return StageResult(
            name="push", status=StageStatus.FAILED, seconds=seconds, detail=detail, data=data
        )
    for name, entry in pushed.items():
        log.info("pushed %s as %s", name, entry["pinned"])
    return StageResult(name="push", status=StageStatus.PASSED, seconds=seconds, data=data)


@task(name="build-images", cache_policy=NO_CACHE)
async def build_images(
    checkout: Path,
    images: list[Image],
    tag: str,
    docker_host: str,
    repository_slug: str,
    registry: str | None = None,
) -> State[StageResult]:
    """Build every ``[[images]]`` entry (the engine's work runs off the event loop)."""
    logger = step_logger("build")
    result = await asyncio.to_thread(
        build_all, checkout, images, tag, docker_host, repository_slug, registry, logger
    )
    return stage_state(result)


@task(name="push-images", cache_policy=NO_CACHE)
async def push_images(
    built: StageResult,
    registry: str,
    credentials: DockerRegistryCredentials | None = None,
    docker_host: str | None = None,
    fork: bool = False,
) -> State[StageResult]:
    """Push the built images by digest; refuses outright for a fork's pull request.

    Without ``credentials``, the saved registry block is used, else the environment's, else
    none (an anonymous push, as to the local stack's registry).
    """
    if fork:
        # Before any credential is loaded: a fork's run gets no secret, not even unused.
        raise ForkPushRefused("a pull request from a fork never pushes images")
    logger = step_logger("push")
    if credentials is None:
        credentials = await load_registry_credentials(registry)
    result = await asyncio.to_thread(
        push_all, built, registry, credentials, docker_host=docker_host, logger=logger
    )
    return stage_state(result)
