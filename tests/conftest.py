"""Shared fixtures: one real control plane per test session, kubernetes clients, per-test namespaces."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents import Lab
from kubernetes import client, config, utils
from lab import Lab as FrrLab
from netns import ApiRelay, sweep_stale
from testenv import ControlPlane, interrupt_on_sigterm


def pytest_sessionstart(session: pytest.Session) -> None:
    # SIGTERM (CI timeouts, kill) becomes Ctrl-C, so fixtures' clean-up still runs.
    interrupt_on_sigterm()
    if os.geteuid() == 0:
        sweep_stale()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root for network namespaces")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="l3lb-test-") as d:
        os.chmod(d, 0o755)  # FRR in the lab runs as user frr and must reach its folders
        yield Path(d)


@pytest.fixture(scope="session")
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(workdir / "cp") as cp:
        yield cp


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(str(control_plane.admin_kubeconfig))


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def discovery(api: client.ApiClient) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (the namespace controller empties it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def agent_kubeconfig(control_plane: ControlPlane, api: client.ApiClient) -> Path:
    """A kubeconfig for the agents' identity, bound by deploy/rbac.yaml and nothing else."""
    utils.create_from_yaml(api, str(REPO / "deploy" / "rbac.yaml"))
    return control_plane.identity("l3lb-agent", ["l3lb:agents"])


@pytest.fixture(scope="session")
def relay(control_plane: ControlPlane, workdir: Path) -> Iterator[ApiRelay]:
    r = ApiRelay(control_plane.state.apiserver_port, workdir)
    yield r
    r.close()


@pytest.fixture
def lab(
    core: client.CoreV1Api, relay: ApiRelay, agent_kubeconfig: Path, workdir: Path, namespace: str
) -> Iterator[Lab]:
    """Simulated nodes for one test; every namespace and agent is gone afterwards."""
    logs = workdir / "logs" / namespace
    logs.mkdir(parents=True)
    lab = Lab(core, relay, agent_kubeconfig, logs, namespace)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def frr_lab(control_plane: ControlPlane, workdir: Path) -> Iterator[FrrLab]:
    """The FRR lab (3 nodes, a router, a client) on the session's control plane, with Service lab/echo."""
    with FrrLab(
        3,
        address_lifetime=6,
        workdir=workdir / "lab",
        control_plane=control_plane,
        log=lambda _: None,
    ) as lab:
        lab.create_service()
        yield lab
