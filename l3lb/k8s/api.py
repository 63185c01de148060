"""The Kubernetes API as the agent uses it: the official client's ApiClient for configuration, auth and
TLS, and a few raw JSON requests on top.

The client's generated API classes are not used: each builds pydantic validators worth about 20 MiB on
instantiation, and the agent parses JSON into its own small values anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION, KubeConfigLoader, KubeConfigMerger

FILE_KEYS = ("certificate-authority", "client-certificate", "client-key")
EX_TEMPFAIL = 75
"""The exit status that asks systemd for a restart (the unit has RestartForceExitStatus= and
SuccessExitStatus= for it): a kubeconfig credential that was copied half-written."""
CREDENTIAL_WAIT = 10.0
"""Seconds a kubeconfig that does not parse is read again before a credential copy is given up on."""

log = logging.getLogger(__name__)


class KubeconfigIncomplete(Exception):
    """The kubeconfig exists but does not parse (yet): k3s truncates and rewrites its kubeconfigs in
    place, so a reader can see an empty or half-written file."""


class KubeconfigStale(Exception):
    """A kubeconfig copied into ``$CREDENTIALS_DIRECTORY`` still does not parse: the copy never changes,
    so only a restart (a fresh copy) helps."""


def load_config(kubeconfig: str | None, credentials_dir: str | None = None) -> client.ApiClient:
    """``kubeconfig`` if given; else in-cluster config; else ``$KUBECONFIG`` (one file or several, merged),
    then ``~/.kube/config``.

    Inline certificates and keys (``client-key-data``, ...) go into memory files (``memfd``), never to
    disk: the client library would write them to temporary files that outlive a killed process. A file a
    kubeconfig names by path, as k3s agent kubeconfigs do, that cannot be read (systemd's LoadCredential
    with DynamicUser) is taken from the credentials directory (``$CREDENTIALS_DIRECTORY``) under the same
    name, when it is there.
    """
    if not kubeconfig:
        try:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        except ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG") or KUBE_CONFIG_DEFAULT_LOCATION
    merged = KubeConfigMerger(kubeconfig).config
    if merged is None:
        raise ConfigException(f"kubeconfig {kubeconfig} does not exist")
    credentials_dir = credentials_dir or os.environ.get("CREDENTIALS_DIRECTORY")
    credentials = Path(credentials_dir) if credentials_dir else None
    for section, inner in (("clusters", "cluster"), ("users", "user")):
        for entry in merged.value.get(section) or []:  # each remembers the file it came from
            fields = entry.value.get(inner)
            if isinstance(fields, dict):
                _credentials_in_memory(fields, Path(entry.path), credentials)
    cfg = client.Configuration()
    # config_base_path None: a relative path is relative to the kubeconfig that names it.
    KubeConfigLoader(config_dict=merged, config_base_path=None).load_and_set(cfg)
    return client.ApiClient(cfg)


def _credentials_in_memory(fields: dict[str, Any], kubeconfig: Path, credentials: Path | None) -> None:
    """Rewrites one cluster's or user's entry in place: inline data to a memory file, and a file that
    cannot be read to the credential of the same name."""
    for key in FILE_KEYS:
        data = fields.pop(f"{key}-data", None)
        if data:
            fields[key] = memory_file(base64.standard_b64decode(data))
            continue
        value = fields.get(key)
        if not value or credentials is None:
            continue
        original = Path(value) if Path(value).is_absolute() else kubeconfig.parent / value
        substitute = credentials / original.name
        if not os.access(original, os.R_OK) and substitute.is_file():
            fields[key] = str(substitute)


_memory_files: dict[bytes, int] = {}
"""File descriptors of the memory files made so far, by the SHA-256 of their content: a kubeconfig read
again (it was half-written) reuses them. They stay open for the process's life, since TLS reads them again
for every new connection."""


def memory_file(content: bytes) -> str:
    """A path that reads as ``content`` in this process alone: a memfd (no file system at all), or where
    memfd_create is not allowed, an unlinked file (O_TMPFILE) in a private 0700 directory that is removed
    at once. The path is ``/proc/self/fd/N``."""
    digest = hashlib.sha256(content).digest()
    fd = _memory_files.get(digest)
    if fd is None:
        try:
            fd = os.memfd_create("l3lb-credential", os.MFD_CLOEXEC)
        except OSError:
            private = tempfile.mkdtemp(prefix="l3lb-")
            try:
                fd = os.open(private, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            finally:
                os.rmdir(private)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        _memory_files[digest] = fd
    return f"/proc/self/fd/{fd}"


def wait_for_client(
    kubeconfig: str | None,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
    credentials_dir: str | None = None,
) -> client.ApiClient | None:
    """``load_client``, read again every half second while the kubeconfig is incomplete (None once
    ``stop`` is set). A file given by path may still be completed by whoever writes it; a copy in the
    credentials directory cannot be, so after CREDENTIAL_WAIT seconds that raises KubeconfigStale."""
    credentials_dir = credentials_dir or os.environ.get("CREDENTIALS_DIRECTORY")
    copied = bool(kubeconfig and credentials_dir) and Path(kubeconfig or "").resolve().is_relative_to(
        Path(credentials_dir or "/").resolve()
    )
    since = clock()
    said = False
    while not stop.is_set():
        try:
            return load_client(kubeconfig, credentials_dir)
        except KubeconfigIncomplete as err:
            if not said:
                log.warning("%s; reading it again until it is complete", err)
                said = True
            if copied and clock() - since >= CREDENTIAL_WAIT:
                raise KubeconfigStale(
                    f"{err} after {CREDENTIAL_WAIT:.0f}s; it is systemd's copy, made at start: exiting "
                    f"with {EX_TEMPFAIL} for a restart with a fresh copy (the addresses stay)"
                ) from None
        stop.wait(0.5)
    return None


def load_client(kubeconfig: str | None, credentials_dir: str | None = None) -> client.ApiClient:
    """``load_config``, with a kubeconfig that exists but does not parse raised as KubeconfigIncomplete."""
    if not kubeconfig:
        return load_config(None, credentials_dir)
    try:
        empty = Path(kubeconfig).stat().st_size == 0
    except FileNotFoundError:
        raise ConfigException(f"kubeconfig {kubeconfig} does not exist") from None
    if empty:
        raise KubeconfigIncomplete(f"kubeconfig {kubeconfig} is empty")
    try:
        return load_config(kubeconfig, credentials_dir)
    except (yaml.YAMLError, ConfigException, AttributeError, KeyError, TypeError, ValueError) as err:
        # A cut-off file parses as YAML of another shape, or not at all: the client raises any of these.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KubeconfigIncomplete(f"kubeconfig {kubeconfig} does not parse ({first})") from None


def path(template: str, **parts: str) -> str:
    return template.format(**{k: quote(v, safe="") for k, v in parts.items()})


class Api:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.client = api_client

    def request(
        self,
        method: str,
        url_path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] = 10.0,
    ) -> Any:
        """One request; returns the urllib3 response, unread (stream it, or ``json(resp)``).

        Raises ApiException for any status other than 2xx.
        """
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        serialized = self.client.param_serialize(
            method,
            url_path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(*serialized, _request_timeout=timeout).response
        if not 200 <= resp.status < 300:
            err = ApiException(status=resp.status, reason=resp.reason)
            err.body = resp.data
            resp.release_conn()
            raise err
        return resp

    def get_json(self, url_path: str, **kw: Any) -> Any:
        return json.loads(self.request("GET", url_path, **kw).data)

    def merge_patch(self, url_path: str, body: Any, **kw: Any) -> Any:
        return json.loads(
            self.request("PATCH", url_path, body=body, content_type="application/merge-patch+json", **kw).data
        )

    def strategic_merge_patch(self, url_path: str, body: Any, **kw: Any) -> Any:
        """Lists with a merge key (``status.conditions``: ``type``) are merged entry by entry."""
        return json.loads(
            self.request(
                "PATCH", url_path, body=body, content_type="application/strategic-merge-patch+json", **kw
            ).data
        )

    def apply(self, url_path: str, body: Any, **kw: Any) -> Any:
        """Server-side apply (``query`` carries fieldManager and force)."""
        return json.loads(
            self.request("PATCH", url_path, body=body, content_type="application/apply-patch+yaml", **kw).data
        )

    def post(self, url_path: str, body: Any, **kw: Any) -> Any:
        return json.loads(
            self.request("POST", url_path, body=body, content_type="application/json", **kw).data
        )

    def put(self, url_path: str, body: Any, **kw: Any) -> Any:
        return json.loads(
            self.request("PUT", url_path, body=body, content_type="application/json", **kw).data
        )


def pages(
    api: Api,
    url_path: str,
    query: dict[str, Any],
    *,
    page_size: int = 200,
    timeout: tuple[float, float] = (5.0, 60.0),
) -> Iterator[dict[str, Any]]:
    """A paginated list, one page of JSON at a time. The last page's ``metadata.resourceVersion`` is the
    list's. 200 a page: of 10,000 Services, or slices, pages of 50 take 1.9 s (1.6 s) to list, pages of
    200 1.0 s (1.2 s) and pages of 500 0.7 s (1.0 s); but a page's JSON is transient memory that stays
    resident, and an agent at 1,000 Services ends at 53, 57 and 63 MiB with each."""
    cont = None
    while True:
        data = api.get_json(url_path, query={**query, "limit": page_size, "continue": cont}, timeout=timeout)
        yield data
        cont = data["metadata"].get("continue")
        if not cont:
            return


def may(
    api: Api, verb: str, group: str, resource: str, subresource: str = "", namespace: str | None = None
) -> bool:
    """Whether these credentials may do it, by SelfSubjectAccessReview. ApiException if it cannot be asked."""
    attrs = {"verb": verb, "group": group, "resource": resource, "subresource": subresource}
    if namespace:
        attrs["namespace"] = namespace
    review = api.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        },
    )
    return bool((review.get("status") or {}).get("allowed"))


def api_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason)
