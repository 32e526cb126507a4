"""Where a Kubernetes environment runs: prefect-kubernetes' cluster config plus Gantry's settings.

The connection itself (kubeconfig content and context) is prefect-kubernetes'
``KubernetesClusterConfig`` block; Gantry adds only what a deploy needs on top of it: the
namespace each environment is pinned to, the cluster-scoped kinds a deploy may apply, how long
a rollout may take, and how often to look.
The same block works for EKS, GKE or any API server a kubeconfig can name.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config.config_exception import ConfigException
from prefect.blocks.core import Block
from prefect_kubernetes.credentials import KubernetesClusterConfig
from pydantic import Field, field_validator

from core.redact import register_model_secrets

__all__ = ["ClusterConfigError", "KubernetesClusterConfig", "KubernetesTarget"]

# Namespace names are DNS labels (RFC 1123).
_NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A kind as the API names it: "ClusterRole", or with its group ("rbac.authorization.k8s.io/...").
_KIND_PATTERN = r"^([a-z0-9.-]+/)?[A-Z][A-Za-z0-9]*$"


class ClusterConfigError(RuntimeError):
    """The kubeconfig in the block cannot make a client (bad context, unreadable credentials)."""


class KubernetesTarget(Block):
    """A Kubernetes cluster that staging and/or production deploy to.

    Every environment is pinned to one namespace: the one ``namespaces`` maps it to, else
    ``namespace_prefix`` + the environment's name ("staging" -> "staging"). Every rendered
    object is placed there; an overlay whose objects name another namespace is refused, never
    followed, so a staging overlay cannot reach production. Cluster-scoped kinds are refused
    unless ``cluster_scoped_kinds`` names them.
    """

    _block_type_name = "Gantry Kubernetes target"
    _block_type_slug = "gantry-kubernetes-target"
    _description = "A Kubernetes cluster Gantry deploys an environment to, by digest."

    cluster_config: KubernetesClusterConfig = Field(
        description="The kubeconfig and context of the cluster (a Kubernetes Cluster Config block)."
    )
    namespaces: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Namespace per environment, e.g. {'staging': 'apps-staging'}; an environment not "
            "listed deploys to namespace_prefix + its name. The overlay never decides."
        ),
    )
    namespace_prefix: str = Field(
        default="",
        pattern=r"^([a-z0-9][-a-z0-9]{0,40})?$",
        description="Prefix of the default namespace of an environment not in namespaces.",
    )
    cluster_scoped_kinds: list[str] = Field(
        default_factory=list,
        description=(
            "Cluster-scoped kinds a deploy may apply, e.g. ['ClusterRole'] or "
            "['rbac.authorization.k8s.io/ClusterRole']; any other one is refused."
        ),
    )
    rollout_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Upper bound in seconds on one rollout; a deploy's own timeout may be shorter.",
    )
    poll_interval: float = Field(
        default=2.0, gt=0, le=60, description="First wait in seconds between rollout checks."
    )
    max_poll_interval: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait in seconds between rollout checks."
    )
    kubernetes_version: str = Field(
        default="1.32.0",
        pattern=r"^\d+\.\d+\.\d+$",
        description="Kubernetes version whose schemas manifests are validated against, offline.",
    )
    field_manager: str = Field(
        default="gantry", min_length=1, description="Server-side apply field manager."
    )

    @field_validator("namespaces")
    @classmethod
    def _namespaces_are_dns_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for environment, namespace in value.items():
            if not re.match(_NAMESPACE_PATTERN, namespace):
                raise ValueError(
                    f"namespace {namespace!r} for {environment!r} is not a valid namespace name"
                )
        return value

    @field_validator("cluster_scoped_kinds")
    @classmethod
    def _kinds_are_kind_names(cls, value: list[str]) -> list[str]:
        for kind in value:
            if not re.match(_KIND_PATTERN, kind):
                raise ValueError(f"{kind!r} is not a kind such as 'ClusterRole'")
        return value

    @classmethod
    def from_kubeconfig(
        cls, path: Path | str | None = None, context: str | None = None, **settings: Any
    ) -> KubernetesTarget:
        """A target from a kubeconfig file (default ``~/.kube/config``) and optional context."""
        try:
            config = KubernetesClusterConfig.from_file(
                Path(path) if path else None, context_name=context
            )
        except (OSError, ValueError, ConfigException) as exc:
            raise ClusterConfigError(
                f"cannot read kubeconfig {path or '~/.kube/config'}: {exc}"
            ) from exc
        target = cls(cluster_config=config, **settings)
        # Read from a file is loaded all the same: its tokens and keys are masked from now on.
        register_model_secrets(target)
        return target

    def namespace_for(self, environment: str) -> str:
        """The one namespace ``environment`` deploys to: configured, else the naming rule."""
        namespace = self.namespaces.get(environment) or f"{self.namespace_prefix}{environment}"
        if not re.match(_NAMESPACE_PATTERN, namespace):
            raise ClusterConfigError(
                f"environment {environment!r} has no valid namespace ({namespace!r}): "
                "set one in the target block's namespaces"
            )
        return namespace

    def allows_cluster_scoped(self, api_version: str, kind: str) -> bool:
        group = api_version.rpartition("/")[0]
        return kind in self.cluster_scoped_kinds or f"{group}/{kind}" in self.cluster_scoped_kinds

    @contextlib.asynccontextmanager
    async def api_client(self) -> AsyncIterator[ApiClient]:
        """An API client for this cluster (prefect-kubernetes' own loader), closed on exit."""
        try:
            client: ApiClient = await self.cluster_config.get_api_client()
        except (ConfigException, KeyError, TypeError, ValueError) as exc:
            # The message names the context or field at fault, never credential values.
            raise ClusterConfigError(
                f"kubeconfig context {self.cluster_config.context_name!r} is unusable: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            yield client
        finally:
            await client.close()
