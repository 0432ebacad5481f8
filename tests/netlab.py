"""A small multi-host lab: one Linux network namespace per host, joined by veth pairs, each
with its own IP and ``/etc/hosts`` (``ip netns exec`` mounts ``/etc/netns/<ns>/hosts``).

Where namespaces are not permitted, every host is the loopback of this machine instead; the
lab says so on stdout and ``isolated`` is False.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Socket:
    """One TCP socket as ``ss`` shows it."""

    state: str
    local: str
    peer: str
    process: str

    @property
    def local_port(self) -> int:
        """Port of the local end."""
        return int(self.local.rsplit(":", 1)[1])

    @property
    def peer_host(self) -> str:
        """Address of the remote end (brackets of IPv6 addresses removed)."""
        return self.peer.rsplit(":", 1)[0].strip("[]")


def _plain(address: str) -> str:
    """``[::ffff:10.0.0.1]:9092`` (IPv4-mapped, as dual-stack sockets show) -> ``10.0.0.1:9092``."""
    return address.replace("[::ffff:", "").replace("]:", ":") if "::ffff:" in address else address


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetLab:
    """Hosts ``names`` in a star: the first (the hub, e.g. the SuperLink) is joined to each
    other host by its own veth pair and /24 (no bridge, so the host firewall's FORWARD policy
    does not matter). Every host resolves the hub's name to the hub's address on its link.
    """

    def __init__(self, names: list[str]) -> None:
        tag = f"{random.randrange(16**4):04x}"
        self.subnet = f"10.{random.randrange(100, 250)}"
        self.hub = names[0]
        self.ns = {name: f"df{tag}-{i}" for i, name in enumerate(names)}
        self.ip = {name: f"{self.subnet}.{i}.2" for i, name in enumerate(names) if i}
        self.hub_ip = {name: f"{self.subnet}.{i}.1" for i, name in enumerate(names) if i}
        self.ip[self.hub] = "127.0.0.1"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.isolated = self._create(tag)
        if not self.isolated:
            print("netlab: network namespaces not permitted here; hosts are loopback processes")
            self.ip = dict.fromkeys(names, "127.0.0.1")
            self.hub_ip = dict.fromkeys(names, "127.0.0.1")

    def _create(self, tag: str) -> bool:
        try:
            _ip("netns", "add", self.ns[self.hub])
        except (subprocess.CalledProcessError, FileNotFoundError):
            return False
        _ip("-n", self.ns[self.hub], "link", "set", "lo", "up")
        hub_hosts = [f"127.0.0.1 localhost {self.hub}"]
        for i, (name, ns) in enumerate(self.ns.items()):
            if name == self.hub:
                continue
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            a, b = f"dfv{tag}{i}a", f"dfv{tag}{i}b"
            _ip("link", "add", a, "netns", self.ns[self.hub], "type", "veth", "peer", "name", b,
                "netns", ns)
            _ip("-n", self.ns[self.hub], "addr", "add", f"{self.hub_ip[name]}/24", "dev", a)
            _ip("-n", self.ns[self.hub], "link", "set", a, "up")
            _ip("-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", b)
            _ip("-n", ns, "link", "set", b, "up")
            hub_hosts.append(f"{self.ip[name]} {name}")
            self._hosts(ns, [f"127.0.0.1 localhost {name}", f"{self.hub_ip[name]} {self.hub}"])
        self._hosts(self.ns[self.hub], hub_hosts)
        return True

    @staticmethod
    def _hosts(ns: str, lines: list[str]) -> None:
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("\n".join(lines) + "\n")

    def _argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv] if self.isolated else argv

    def popen(
        self, host: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` in its own process group, output to ``log``."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self._argv(host, argv),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, host: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to completion."""
        return subprocess.run(
            self._argv(host, argv),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sockets(self, host: str) -> list[Socket]:
        """TCP sockets (listening and connected) of ``host`` with their processes."""
        out = subprocess.run(
            self._argv(host, ["ss", "-tanpH"]), capture_output=True, text=True, check=True
        ).stdout
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                local, peer = (_plain(a) for a in parts[3:5])
                rows.append(Socket(parts[0], local, peer, " ".join(parts[5:])))
        return rows

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Kill ``proc``'s whole process group (the component and the apps it spawned)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stop every process (SuperNodes first), then remove namespaces and the bridge."""
        for proc in reversed(self.procs):
            self.kill(proc, signal.SIGTERM)
        time.sleep(0.2)
        if not self.isolated:
            return
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
