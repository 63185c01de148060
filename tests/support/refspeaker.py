"""The reference for bench/peers.py: a direct BGP speaker on a node, peering the router itself.

Two parts, both in the node's network namespace:
- ``bench/refspeaker`` (our own Go program, built here from the Go module proxy: GoBGP v3.37.0's server
  package, the library gobgpd is made of) holds one BGP session to the router over numbered IPv4 and adds
  or withdraws a /32 when told so on stdin;
- this module run as a script: the speaker's controller, which watches the Service's EndpointSlices
  through the same API relay as an l3lb agent and, when the node gains or loses a ready endpoint, tells
  the speaker at once (as MetalLB's speaker does for a Local Service in native BGP mode).

The controller logs, on the same clock as the bench (``time.monotonic()``, one clock for every process):
``<t> slice ready|notready`` for each change it sees, ``<t> sent add|del PREFIX`` when it wrote the
command, and the speaker's own answers ``<t> ok add|del PREFIX NS`` (NS: nanoseconds GoBGP's AddPath or
DeletePath took) and ``<t> peer ADDRESS STATE``.

    python tests/support/refspeaker.py --kubeconfig K --namespace NS --service S --node N --prefix P \
        --speaker BIN -- --local A --peer B --asn N
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "bench" / "refspeaker"
GOBGP_MODULE = "github.com/osrg/gobgp/v3"


def gobgp_version() -> str:
    """The GoBGP version bench/refspeaker/go.mod requires."""
    for line in (SOURCE / "go.mod").read_text().splitlines():
        parts = line.split()
        if GOBGP_MODULE in parts:
            return parts[parts.index(GOBGP_MODULE) + 1]
    raise RuntimeError(f"{SOURCE / 'go.mod'} does not require {GOBGP_MODULE}")


def build(cache: Path) -> Path:
    """The speaker's binary in ``cache``, built first if missing (per GoBGP version and source digest)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    out = cache / f"refspeaker-gobgp-{gobgp_version()}-{digest.hexdigest()[:12]}" / "refspeaker"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=readonly"}
    log = cache / "build.log"
    with open(log, "ab") as f:
        f.write(b"\n== refspeaker\n")
        f.flush()
        done = subprocess.run(
            ["go", "build", "-ldflags=-s -w", "-o", str(out) + ".tmp", "."],
            cwd=SOURCE,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"building bench/refspeaker failed; the Go output is in {log}")
    os.replace(str(out) + ".tmp", out)
    return out


# ---- the controller, run inside the node's namespace


def _say(line: str) -> None:
    sys.stdout.write(f"{time.monotonic():.6f} {line}\n")
    sys.stdout.flush()


def _relay_speaker(speaker: subprocess.Popen) -> None:
    assert speaker.stdout is not None
    for line in speaker.stdout:
        _say(line.rstrip("\n"))


def ready_on(slices: dict[str, dict], node: str) -> bool:
    """Whether any of these EndpointSlices has a ready endpoint on ``node`` (unset ready counts as ready)."""
    return any(
        ep.get("nodeName") == node and (ep.get("conditions") or {}).get("ready") is not False
        for s in slices.values()
        for ep in s.get("endpoints") or []
    )


def controller(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE.parents[1]))
    from kubernetes.watch.watch import iter_resp_lines

    from l3lb.k8s.api import Api, load_client

    speaker = subprocess.Popen(
        [args.speaker, *args.speaker_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    threading.Thread(target=_relay_speaker, args=(speaker,), daemon=True).start()
    assert speaker.stdin is not None
    api = Api(load_client(args.kubeconfig))
    path = f"/apis/discovery.k8s.io/v1/namespaces/{args.namespace}/endpointslices"
    selector = f"kubernetes.io/service-name={args.service}"
    listed = api.get_json(path, query={"labelSelector": selector})
    slices = {s["metadata"]["name"]: s for s in listed["items"]}
    rv = listed["metadata"]["resourceVersion"]
    announced = False

    def apply() -> None:
        nonlocal announced
        want = ready_on(slices, args.node)
        _say(f"slice {'ready' if want else 'notready'}")
        if want != announced:
            speaker.stdin.write(f"{'add' if want else 'del'} {args.prefix}\n")  # type: ignore[union-attr]
            speaker.stdin.flush()  # type: ignore[union-attr]
            _say(f"sent {'add' if want else 'del'} {args.prefix}")
            announced = want

    apply()
    try:
        while True:
            query = {"watch": "true", "labelSelector": selector, "resourceVersion": rv, "timeoutSeconds": 300}
            resp = api.request("GET", path, query=query, timeout=(5, 320))
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if event["type"] == "DELETED":
                    slices.pop(obj["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    slices[obj["metadata"]["name"]] = obj
                else:
                    continue
                apply()
    except KeyboardInterrupt:
        pass
    finally:
        speaker.stdin.close()
        speaker.wait(10)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description="the reference speaker's controller (see the module's doc)")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--speaker", required=True)
    ap.add_argument("speaker_args", nargs="*")
    return controller(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
