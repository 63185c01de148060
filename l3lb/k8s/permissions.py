"""What the agent does with the API, in one table: read by ``l3lb check``, by the leader election (which
stands only with every permission the allocator needs), and compared with deploy/rbac.yaml by the tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubernetes.client.rest import ApiException

from .api import Api, may

WATCH, STATUS, EVENTS, ELECT = "watch", "status", "events", "elect"
"""What a permission is for: watching (required), writing status and leading the allocator election (both
needed to allocate), writing Events."""


@dataclass(frozen=True, slots=True)
class Permission:
    verb: str
    group: str
    resource: str
    subresource: str
    purpose: str

    @property
    def in_lease_namespace(self) -> bool:
        return self.resource == "leases"

    def describe(self, lease_namespace: str) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        return f"{self.verb} {res}" + (f" in {lease_namespace}" if self.in_lease_namespace else "")


PERMISSIONS: tuple[Permission, ...] = (
    Permission("list", "", "services", "", WATCH),
    Permission("watch", "", "services", "", WATCH),
    Permission("list", "discovery.k8s.io", "endpointslices", "", WATCH),
    Permission("watch", "discovery.k8s.io", "endpointslices", "", WATCH),
    Permission("list", "", "nodes", "", WATCH),
    Permission("watch", "", "nodes", "", WATCH),
    Permission("patch", "", "services", "status", STATUS),
    Permission("create", "", "events", "", EVENTS),
    Permission("patch", "", "events", "", EVENTS),
    Permission("get", "coordination.k8s.io", "leases", "", ELECT),
    Permission("create", "coordination.k8s.io", "leases", "", ELECT),
    Permission("update", "coordination.k8s.io", "leases", "", ELECT),
)
ALLOCATE = (STATUS, ELECT)


def check(
    api: Api, lease_namespace: str, purposes: Iterable[str] | None = None
) -> list[tuple[Permission, bool]]:
    """Each permission (of the given purposes) with whether these credentials have it, by
    SelfSubjectAccessReview. ApiException if the apiserver cannot answer."""
    wanted = set(purposes) if purposes is not None else None
    return [
        (
            p,
            may(
                api,
                p.verb,
                p.group,
                p.resource,
                p.subresource,
                lease_namespace if p.in_lease_namespace else None,
            ),
        )
        for p in PERMISSIONS
        if wanted is None or p.purpose in wanted
    ]


def may_allocate(api: Api, lease_namespace: str) -> tuple[bool, str]:
    """Whether these credentials may allocate (write status, lead the election), and if not what is missing.
    ApiException (other than 401/403 on the review itself) if the apiserver cannot answer."""
    try:
        results = check(api, lease_namespace, ALLOCATE)
    except ApiException as err:
        if err.status not in (401, 403):
            raise
        return False, "create selfsubjectaccessreviews"
    missing = [p.describe(lease_namespace) for p, ok in results if not ok]
    return not missing, ", ".join(missing)
