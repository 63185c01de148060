"""systemd's notify protocol (one datagram per message, no dependency): READY=1 with STATUS=, WATCHDOG=1,
STOPPING=1."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Talks to ``$NOTIFY_SOCKET`` when systemd set it (Type=notify); does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if wanted else None
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
        self.ready = False
        self._next_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(self.address)
            s.sendall("\n".join(fields).encode())

    def status(self, text: str) -> None:
        """READY=1 with the first status (the agent runs and holds what it adopted from the interface:
        sent at its first read, whether or not the API answers, since systemd fails a start that takes
        longer than TimeoutStartSec), then the status alone."""
        self.send(f"STATUS={text}") if self.ready else self.send("READY=1", f"STATUS={text}")
        self.ready = True

    def ping(self, now: float) -> None:
        """WATCHDOG=1, when a watchdog is set and half its interval passed since the last ping."""
        if self.watchdog_interval is not None and now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval
