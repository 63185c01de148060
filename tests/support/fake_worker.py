"""A stand-in for the conditions worker's entry point (``l3lb.conditions.worker.main``), spawned by the
tests of ``l3lb.conditions.link``: it answers every message so that the test sees, through the agent's
metrics, what the worker was sent and in which order."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection

import l3lb.conditions.worker  # noqa: F401  # the real worker's imports load in a spawned process
from l3lb.conditions.worker import Setup

DIE = ("ns", "die")
"""A Service of this key in a hand-over ends the process with exit code 3."""


def main(setup: Setup, conn: Connection) -> None:
    """Answers each message with ("written", its kind), in order; a hand-over also with ("backlog", how many
    Services it names); ends on "stop" or when the agent's end closes."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        conn.send(("written", message[0]))
        if message[0] == "assigned":
            if DIE in message[1]:
                os._exit(3)
            conn.send(("backlog", len(message[1])))
