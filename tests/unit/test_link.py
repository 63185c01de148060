"""The agent's side of the conditions worker (``l3lb.conditions.link``), with a stand-in worker
(``tests/support/fake_worker.py``) spawned as the real one is and a fake clock for the restart backoff."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fake_worker
import pytest

from l3lb.conditions.link import CHUNK, Link, in_parts
from l3lb.conditions.worker import Parts, Setup
from l3lb.config import Config, parse_prefixes
from l3lb.ipam.allocator import Assigned
from l3lb.ipam.pools import parse as parse_pools
from l3lb.metrics import Metrics
from l3lb.model import parse_service

CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1")
SETUP = Setup(CFG, None, "kube-system", "warning", "text")


def assigned(name: str) -> Assigned:
    svc = parse_service({"metadata": {"namespace": "ns", "name": name}, "spec": {"type": "LoadBalancer"}})
    return Assigned(svc, True)


class Harness:
    def __init__(self) -> None:
        self.now = [0.0]
        self.until = [30.0]
        self.metrics = Metrics()
        self.link = Link(
            SETUP,
            self.metrics,
            lambda: self.until[0],
            target=fake_worker.main,
            clock=lambda: self.now[0],
        )

    def told(self, kind: str) -> float:
        """How many messages of this kind the worker has answered so far."""
        value = self.metrics.registry.get_sample_value("l3lb_condition_writes_total", {"outcome": kind})
        return value or 0.0

    def backlog(self) -> float:
        return self.metrics.registry.get_sample_value("l3lb_condition_backlog") or 0.0

    def wait(self, what: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError("the worker did not answer in time")
            time.sleep(0.01)


@pytest.fixture
def h() -> object:
    harness = Harness()
    yield harness
    harness.link.close()


def test_no_worker_runs_unless_leading_and_a_term_hands_everything_over(h: Harness) -> None:
    h.link.on_assigned({("ns", "a"): assigned("a")}, True)  # not leading: ignored
    h.link.step()
    assert h.link.starts == 0
    h.link.on_leader(True)
    h.link.on_assigned({("ns", "a"): assigned("a"), ("ns", "b"): assigned("b")}, True)
    h.link.step()
    assert h.link.starts == 1
    h.wait(lambda: h.backlog() == 2)
    assert h.told("lease") == 1, "the lease's validity goes before the hand-over"
    h.link.on_assigned({("ns", "b"): None}, False)
    h.link.step()
    h.wait(lambda: h.told("assigned") == 2)
    h.link.step()
    assert h.told("lease") == 1, "sent again only when it changes"
    h.until[0] = 40.0
    h.link.step()
    h.wait(lambda: h.told("lease") == 2)


def test_a_large_hand_over_goes_in_parts_that_the_worker_puts_together(h: Harness) -> None:
    """No message pickles more than CHUNK Services (pickling holds the agent's interpreter); the worker gives
    the keeper a hand-over of every Service whole, and changes as they come."""
    h.link.on_leader(True)
    everyone = {("ns", f"s{i}"): assigned(f"s{i}") for i in range(2 * CHUNK + 50)}
    h.link.on_assigned(everyone, True)
    h.link.step()
    h.wait(lambda: h.told("assigned") == 3)
    assert h.backlog() == 50, "three parts, the last of 50"

    parts = Parts()
    messages = in_parts(("assigned", everyone, True))
    assert [len(m[1]) for m in messages] == [CHUNK, CHUNK, 50] and [m[3] for m in messages] == [0, 0, 1]
    given = [parts.add(*m[1:]) for m in messages]
    assert given[:2] == [None, None] and given[2] == (everyone, True)
    assert parts.add({("ns", "s0"): None}, False, True) == ({("ns", "s0"): None}, False)
    assert in_parts(("assigned", {}, True)) == [("assigned", {}, True, True)], "no Service: one empty part"


def test_a_worker_that_dies_is_started_again_after_a_backoff_with_the_whole_hand_over(h: Harness) -> None:
    h.link.on_leader(True)
    h.link.on_assigned({("ns", "a"): assigned("a"), ("ns", "b"): assigned("b")}, True)
    h.link.step()
    h.wait(lambda: h.backlog() == 2)
    h.link.on_assigned({("ns", "b"): None, fake_worker.DIE: assigned("die")}, False)
    h.link.step()
    proc = h.link._proc
    assert proc is not None
    proc.join(20)
    assert proc.exitcode == 3
    h.link.on_assigned({fake_worker.DIE: None}, False)
    h.link.step()
    assert h.link.starts == 1, "not at once"
    h.now[0] += 1.0
    h.link.step()
    assert h.link.starts == 2
    h.wait(lambda: h.told("assigned") == 3)
    assert h.backlog() == 1, "the new worker is handed the term's Services as they are now: a only"


def test_the_worker_stops_when_the_term_ends_and_a_new_term_starts_a_new_one(h: Harness) -> None:
    h.link.on_leader(True)
    h.link.on_assigned({("ns", "a"): assigned("a")}, True)
    h.link.step()
    h.wait(lambda: h.backlog() == 1)
    first = h.link._proc
    h.link.on_leader(False)
    h.link.step()
    assert first is not None and first.exitcode == 0 and h.link._proc is None
    assert h.backlog() == 0
    h.link.on_assigned({("ns", "a"): assigned("a")}, True)  # a late hand-over of the old term: ignored
    h.link.on_leader(True)
    h.link.step()
    assert h.link.starts == 2
    h.wait(lambda: h.told("lease") == 2)
    assert h.told("assigned") == 1, "nothing handed over yet in the new term"


def test_the_worker_starts_under_a_wrapper_that_sets_sys_path_only_inside_the_script(tmp_path: Path) -> None:
    """nixpkgs' Python wrappers (wrap-python.nix's preamble) add the dependencies with site.addsitedir inside
    the wrapped script, not in the environment. The same here: the system's Python without site packages,
    and a script that adds the virtualenv's and the tests' paths itself; the worker must still import."""
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "wrapped.py"
    script.write_text(
        "import sys, site, functools\n"
        f"functools.reduce(lambda k, p: site.addsitedir(p, k), {site_dirs!r}, site._init_pathinfo())\n"
        f"sys.path[:0] = {[str(repo), *(str(repo / 'tests' / d) for d in ('', 'support', 'unit'))]!r}\n"
        "if __name__ == '__main__':\n"
        "    import test_link\n"
        "    test_link.run_wrapped()\n"
    )
    base = getattr(sys, "_base_executable", sys.executable)
    bare = subprocess.run([base, "-s", "-S", "-c", "import kubernetes"], capture_output=True, cwd=tmp_path)
    assert bare.returncode != 0, "the model holds: outside the script, the dependencies are not found"
    out = subprocess.run(
        [base, "-s", "-S", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "answered"


def run_wrapped() -> None:
    """Inside the wrapped script: a Link spawns the stand-in, which imports l3lb's worker and answers."""
    harness = Harness()
    try:
        harness.link.on_leader(True)
        harness.link.on_assigned({("ns", "a"): assigned("a")}, True)
        harness.link.step()
        harness.wait(lambda: harness.backlog() == 1, timeout=30)
        print("answered")
    finally:
        harness.link.close()


def test_the_setup_survives_the_trip_to_the_worker() -> None:
    """What ``spawn`` pickles: a configuration with pools and their selectors comes out equal."""
    pools = parse_pools(
        {
            "pools": [
                {
                    "name": "edge",
                    "prefixes": ["10.0.100.0/25"],
                    "reserved": ["10.0.100.0/30"],
                    "namespaces": ["web"],
                    "serviceSelector": {"matchLabels": {"tier": "edge"}},
                    "nodeSelector": {
                        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]
                    },
                }
            ]
        }
    )
    setup = dataclasses.replace(SETUP, config=dataclasses.replace(CFG, pools=pools), kubeconfig="/k")
    assert pickle.loads(pickle.dumps(setup)) == setup
