"""Smoke test of the test bed itself: the real control plane, the real EndpointSlice controller, RBAC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubelet import create_lb_service, create_node, create_pod, set_pod_ready, wait_for
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from testenv import ControlPlane, versions

pytestmark = pytest.mark.cluster
HERE = Path(__file__).resolve().parent


def _endpoints(discovery: client.DiscoveryV1Api, namespace: str, service: str) -> list:
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return [ep for s in slices for ep in (s.endpoints or [])]


def test_version_is_the_pinned_release(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == versions()["KUBE_VERSION"]


def test_endpointslice_follows_pod_readiness(core, discovery, namespace: str) -> None:
    if not any(n.metadata.name == "n1" for n in core.list_node().items):
        create_node(core, "n1")
    create_lb_service(core, namespace, "web", selector={"app": "web"})
    create_pod(core, namespace, "web-1", "n1", "10.244.1.10", labels={"app": "web"})

    def ready_on_n1() -> object:
        eps = _endpoints(discovery, namespace, "web")
        return [e for e in eps if e.node_name == "n1" and e.conditions.ready] or None

    (ep,) = wait_for(ready_on_n1, what="a ready endpoint on n1")
    assert ep.addresses == ["10.244.1.10"]

    set_pod_ready(core, namespace, "web-1", False)
    wait_for(
        lambda: [
            e
            for e in _endpoints(discovery, namespace, "web")
            if e.node_name == "n1" and e.conditions.ready is False
        ],
        what="the endpoint on n1 to turn not ready",
    )


def test_an_identity_without_bindings_is_refused(control_plane: ControlPlane) -> None:
    path = control_plane.identity("nobody-agent", ["example:unbound"])
    core = client.CoreV1Api(config.new_client_from_config(str(path)))
    with pytest.raises(ApiException) as err:
        core.list_service_for_all_namespaces()
    assert err.value.status == 403
    assert "nobody-agent" in err.value.body


def test_shell_interface_runs_a_second_control_plane(tmp_path: Path, control_plane: ControlPlane) -> None:
    """``testenv.py up/identity/down`` from the shell, beside the session's own control plane."""
    script = [sys.executable, str(HERE.parent / "support" / "testenv.py")]
    d = tmp_path / "shell-cp"
    up = subprocess.run([*script, "up", "--dir", str(d)], check=True, capture_output=True, text=True)
    try:
        admin = Path(up.stdout.strip())
        assert admin == d / "admin.kubeconfig"
        ident = subprocess.run(
            [*script, "identity", "--dir", str(d), "--user", "agent-1", "--group", "g1"],
            check=True,
            capture_output=True,
            text=True,
        )
        agent = Path(ident.stdout.strip())
        second = ControlPlane.attach(d)
        assert second.server != control_plane.server
        version = client.VersionApi(config.new_client_from_config(str(admin))).get_code()
        assert version.git_version == versions()["KUBE_VERSION"]
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(config.new_client_from_config(str(agent))).list_node()
        assert err.value.status == 403
        pids = dict(second.state.pids)
    finally:
        subprocess.run([*script, "down", "--dir", str(d)], check=True)
    assert not (d / "testenv.json").exists()
    from testenv import pid_alive

    assert not [name for name, pid in pids.items() if pid_alive(pid)]


def test_the_agent_identity_gets_exactly_what_rbac_grants(agent_kubeconfig: Path, namespace: str) -> None:
    core = client.CoreV1Api(config.new_client_from_config(str(agent_kubeconfig)))
    core.list_service_for_all_namespaces(field_selector="spec.type=LoadBalancer")
    for refused in (
        lambda: core.list_secret_for_all_namespaces(),
        lambda: core.delete_collection_namespaced_service(namespace),
        lambda: core.create_namespaced_service(namespace, {"metadata": {"name": "x"}}),
    ):
        with pytest.raises(ApiException) as err:
            refused()
        assert err.value.status == 403
