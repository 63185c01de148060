"""One table of what the agent may need (l3lb/k8s/permissions.py), and deploy/rbac.yaml grants exactly
that."""

from __future__ import annotations

from pathlib import Path

import yaml

from l3lb.k8s.permissions import PERMISSIONS

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


def granted() -> set[tuple[str, str, str, str, bool]]:
    """(verb, group, resource, subresource, in a namespaced Role) for every rule of deploy/rbac.yaml."""
    out = set()
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    resource, _, sub = res.partition("/")
                    for verb in rule["verbs"]:
                        out.add((verb, group, resource, sub, doc["kind"] == "Role"))
    return out


def test_rbac_grants_exactly_the_permission_table() -> None:
    table = {(p.verb, p.group, p.resource, p.subresource, p.in_lease_namespace) for p in PERMISSIONS}
    assert granted() == table


def test_the_lease_role_lives_in_the_default_lease_namespace() -> None:
    roles = [d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] in ("Role", "RoleBinding")]
    assert roles and all(d["metadata"]["namespace"] == "kube-system" for d in roles)
