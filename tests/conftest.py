"""Shared fixtures: one real control plane per test session, kubernetes clients, per-test namespaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agents import Lab
from kubernetes import client, config, utils
from lab import FRR
from lab import Lab as FrrLab
from netns import ApiRelay, sweep_stale
from soak import SEEDS
from testenv import NIXPKGS_LIB_MISSING, ControlPlane, cache_dir, interrupt_on_sigterm, versions


def pytest_sessionstart(session: pytest.Session) -> None:
    # SIGTERM (CI timeouts, kill) becomes Ctrl-C, so fixtures' clean-up still runs.
    interrupt_on_sigterm()
    if os.geteuid() == 0:
        sweep_stale()


REPO = Path(__file__).resolve().parent.parent


def _binaries_built() -> bool:
    v = versions()
    kube, etcd = cache_dir() / f"kube-{v['KUBE_VERSION']}", cache_dir() / f"etcd-{v['ETCD_VERSION']}"
    return all(
        p.exists()
        for p in (kube / "kube-apiserver", kube / "kube-controller-manager", kube / "kubectl", etcd / "etcd")
    )


# What each marker needs, checked once per session: a test whose needs are not met skips itself with the
# reason, so that a plain `pytest` runs anywhere (the Nix package's check phase is one). `make test` sets
# L3LB_REQUIRE_ALL=1, which turns any such skip into an error: the full suite must really run there.
REQUIREMENTS: dict[str, tuple[Callable[[], bool], str]] = {
    "root": (
        lambda: os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "socat")),
        "needs root with ip and socat (network namespaces)",
    ),
    "cluster": (_binaries_built, "needs the control plane binaries and kubectl (make test builds them)"),
    "frr": (lambda: (FRR / "zebra").exists() and shutil.which("vtysh") is not None, "needs FRR (Debian frr)"),
    "nix": (
        lambda: shutil.which("nix-instantiate") is not None and (REPO / "nixos").is_dir(),
        "needs nix-instantiate and the repository's nixos/ folder",
    ),
    "systemd": (lambda: shutil.which("systemd-analyze") is not None, "needs systemd-analyze"),
    "nixpkgs_lib": (lambda: not NIXPKGS_LIB_MISSING, NIXPKGS_LIB_MISSING),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmet = {name: why for name, (met, why) in REQUIREMENTS.items() if not met()}
    needed = {name for item in items for name in unmet if name in item.keywords}
    if needed and os.environ.get("L3LB_REQUIRE_ALL") == "1":
        why = "; ".join(unmet[n] for n in sorted(needed))
        raise pytest.UsageError(f"L3LB_REQUIRE_ALL=1 but these tests cannot run here: {why}")
    for item in items:
        for name in needed:
            if name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=unmet[name]))
                break


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The chaos soaks' tables, with their seeds: replay one with ``bench/soak.py --seed N``."""
    for table in config.stash.get(SEEDS, []):
        terminalreporter.write_line(table)


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


@pytest.fixture(scope="session")
def agent_kubeconfig(control_plane: ControlPlane, api: client.ApiClient) -> Path:
    """A kubeconfig for the agents' identity, bound by deploy/rbac.yaml and nothing else (which the FRR
    lab may have applied first, on the same control plane)."""
    with contextlib.suppress(utils.FailToCreateError):
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
    """The FRR lab (3 nodes, a router, a client) on the session's control plane, with Service lab/echo; its
    agents drain for 3 s on SIGTERM."""
    with FrrLab(
        3,
        address_lifetime=6,
        drain_seconds=3,
        workdir=workdir / "lab",
        control_plane=control_plane,
        log=lambda _: None,
    ) as lab:
        lab.create_service()
        yield lab
