"""Removing a local target's container on the real engine: running or already gone."""

from __future__ import annotations

import docker
import pytest
from docker.errors import NotFound

from flows.deploy.local import remove_container

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_a_running_container_is_removed_and_removing_it_again_is_a_no_op(
    docker_api: docker.DockerClient, busybox_image: str
) -> None:
    container = docker_api.containers.run(busybox_image, ["sleep", "300"], detach=True)
    remove_container(container)
    with pytest.raises(NotFound):
        docker_api.containers.get(container.id)
    # The engine already forgot it (a retry after a "busy" answer can find it so).
    remove_container(container)
