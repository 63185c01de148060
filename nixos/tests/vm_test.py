# Test script of nixos/tests/vm.nix (the NixOS test driver provides start_all, router, server, agent and
# client; vm.nix prepends VIP). Checked here with ruff and Python's compiler.
# ruff: noqa: F821
import json
import time

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
        - name: echo
          image: test.local/echo:local
          imagePullPolicy: Never
          env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  annotations: {l3lb.io/load-balancer-ips: "%s"}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"""


def next_hops() -> set[str]:
    """The router's next hops for the VIP, by interface (eth1: server, eth2: agent)."""
    out = json.loads(router.succeed(f"ip -j route show {VIP}/32"))
    if not out:
        return set()
    return {hop["dev"] for hop in out[0].get("nexthops") or [out[0]]}


def wait_hops(expected: set[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while next_hops() != expected:
        assert time.monotonic() < deadline, f"router next hops {next_hops()}, expected {expected}"
        time.sleep(1)


start_all()
router.wait_for_unit("frr.service")
server.wait_for_unit("k3s.service")
agent.wait_for_unit("k3s.service")
server.wait_until_succeeds("k3s kubectl get node agent | grep -w Ready", timeout=300)
server.wait_for_unit("l3lb.service")
agent.wait_for_unit("l3lb.service")

with subtest("the agent node passes k3s' kube-proxy kubeconfig and its certificates as credentials"):
    agent.succeed("systemctl show l3lb -p LoadCredential | grep kubeproxy.kubeconfig")
    agent.succeed("systemctl show l3lb -p LoadCredential | grep client-kube-proxy.key")

with subtest("on the server, l3lb runs as its own least-privilege identity, not cluster-admin"):
    server.succeed("systemctl show l3lb -p LoadCredential | grep /var/lib/l3lb/kubeconfig")
    server.succeed("journalctl -u l3lb-identity.service | grep 'wrote /var/lib/l3lb/kubeconfig'")
    server.wait_until_succeeds("k3s kubectl get clusterrolebinding l3lb-agent", timeout=120)
    server.succeed("k3s kubectl auth can-i patch services/status --as l3lb:server --as-group l3lb:agents")
    server.fail("k3s kubectl auth can-i list secrets --as l3lb:server --as-group l3lb:agents")

with subtest("on the agent, l3lb waited for k3s' kubeconfig instead of failing"):
    agent.succeed("test $(systemctl show l3lb -P NRestarts) = 0")
    agent.fail("journalctl -u l3lb.service | grep -i 'failed with result'")

with subtest("the nodes' rendered uplinks peer with the router, BFD up, ebgp-requires-policy on"):
    router.wait_until_succeeds("vtysh -c 'show bfd peers' | grep -c 'Status: up' | grep -x 2", timeout=120)
    for node in (server, agent):
        node.fail("vtysh -c 'show running-config' | grep 'no bgp ebgp-requires-policy'")

with subtest("a LoadBalancer Service with a requested IP is reachable from the client"):
    server.succeed(f"cat > /tmp/echo.yaml <<'EOF'\n{MANIFEST % VIP}\nEOF")
    server.succeed("k3s kubectl apply -f /tmp/echo.yaml")
    ingress = "k3s kubectl get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}'"
    server.wait_until_succeeds(f"{ingress} | grep -x {VIP}", timeout=120)
    router.wait_until_succeeds(f"ip route show {VIP}/32 | grep -q .", timeout=180)
    client.wait_until_succeeds(f"curl -sf --max-time 3 http://{VIP}/", timeout=120)

with subtest("two replicas: ECMP at the router"):
    server.succeed("k3s kubectl scale deployment echo --replicas=2")
    server.succeed(
        "k3s kubectl patch deployment echo -p "
        '\'{"spec":{"template":{"spec":{"topologySpreadConstraints":[{"maxSkew":1,'
        '"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule",'
        '"labelSelector":{"matchLabels":{"app":"echo"}}}]}}}}\''
    )
    wait_hops({"eth1", "eth2"})
    served = {client.succeed(f"curl -sf --max-time 3 http://{VIP}/").strip() for _ in range(30)}
    assert served == {"server", "agent"}, served

with subtest("a cordon keeps the node serving"):
    server.succeed("k3s kubectl cordon agent")
    agent.wait_until_succeeds("journalctl -u l3lb.service | grep -q 'handled node SET agent'", timeout=60)
    time.sleep(3)  # longer than a withdrawal takes to reach the router
    assert next_hops() == {"eth1", "eth2"}, next_hops()
    server.succeed("k3s kubectl uncordon agent")

with subtest(
    "the drain annotation moves traffic off gracefully, withdraws after the drain, and comes undone"
):
    server.succeed("k3s kubectl annotate node agent l3lb.io/drain=true")
    wait_hops({"eth1"}, timeout=30)  # GRACEFUL_SHUTDOWN: the router sets LOCAL_PREF 0 (eBGP, FRR)
    agent.succeed(f"ip -o addr show dev l3lbdrain | grep -w {VIP}")
    router.succeed(f"vtysh -c 'show bgp ipv4 unicast {VIP}/32' | grep graceful-shutdown")
    client.succeed(f"curl -sf --max-time 3 http://{VIP}/ | grep -x server")
    agent.wait_until_fails(f"ip -o addr show dev l3lbdrain | grep -w {VIP}", timeout=30)
    router.wait_until_fails(f"vtysh -c 'show bgp ipv4 unicast {VIP}/32' | grep graceful-shutdown", timeout=30)
    server.succeed("k3s kubectl annotate node agent l3lb.io/drain-")
    wait_hops({"eth1", "eth2"})

with subtest("stopping l3lb drains, then withdraws its routes, and it stays stopped"):
    agent.succeed("systemctl stop l3lb")  # returns once the drain is over (TimeoutStopSec leaves room)
    wait_hops({"eth1"})
    agent.succeed(f"! ip -o addr show | grep -w {VIP}")
    agent.succeed("journalctl -u l3lb.service | grep 'stopping: draining 1 address for 10s'")
    time.sleep(5)
    agent.fail("systemctl is-active l3lb")
