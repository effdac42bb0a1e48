"""The listening sockets of a process and its descendants, read from /proc (Linux): TCP sockets in LISTEN,
bound UDP sockets and Unix sockets that accept connections. tests/test_security.py lists a short fit's with
it; as a script it runs a command and prints every listener its processes held, sampled every 0.1 s (how
the inventory in docs/security.md was taken):

    .venv/bin/python -m tests.listeners -- .venv/bin/paw fit --config configs/quickstart.yaml --trainer.max_epochs=1
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import psutil


class Listener(NamedTuple):
    inode: int  # the socket's inode: unique while it is open
    pid: int
    process: str  # the owner's name (/proc/<pid>/comm), e.g. python, java, pt_main_thread
    protocol: str  # tcp, tcp6, udp, udp6, unix
    address: str  # the bound address (an IPv4-mapped IPv6 address is shown as IPv4), or a Unix path
    port: int  # 0 for Unix sockets

    def where(self) -> str:
        return f"{self.protocol} {self.address}:{self.port}" if self.port else f"{self.protocol} {self.address}"


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    words = bytes.fromhex(hex_address)
    packed = b"".join(words[i:i + 4][::-1] for i in range(0, len(words), 4))
    address = ipaddress.ip_address(packed)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _inet_table(protocol: str) -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of the listening (TCP) or bound (UDP) sockets of /proc/net/<protocol>."""
    wanted = "0A" if protocol.startswith("tcp") else "07"  # TCP_LISTEN; TCP_CLOSE, which a bound UDP socket shows
    found = {}
    with open(f"/proc/net/{protocol}") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            host, port = local.split(":")
            if state == wanted and inode and int(port, 16):
                found[inode] = (_address(host), int(port, 16))
    return found


def _unix_table() -> dict[int, tuple[str, int]]:
    """inode -> (path, 0) of the Unix sockets that accept connections (flag __SO_ACCEPTCON)."""
    found = {}
    with open("/proc/net/unix") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000:
                found[int(fields[6])] = (fields[7] if len(fields) > 7 else "(unnamed)", 0)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:  # the process has ended
        pass
    return inodes


def listeners(root_pid: int) -> set[Listener]:
    """Every listener held by ``root_pid`` and its descendants right now."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    tables = {protocol: _inet_table(protocol) for protocol in ("tcp", "tcp6", "udp", "udp6")} | {"unix": _unix_table()}
    found = set()
    for process in processes:
        try:
            name = process.name()
        except psutil.Error:
            continue
        for inode in _socket_inodes(process.pid):
            for protocol, table in tables.items():
                if inode in table:
                    found.add(Listener(inode, process.pid, name, protocol, *table[inode]))
    return found


class ListenerSampler:
    """Within: samples ``listeners(root_pid)`` every ``period_s`` in a thread; ``seen`` is their union and
    ``lifetime[listener]`` the (first, last) seconds after the start at which it was seen."""

    def __init__(self, root_pid: int, period_s: float = 0.1) -> None:
        self.root_pid, self.period_s = root_pid, period_s
        self.seen: set[Listener] = set()
        self.lifetime: dict[Listener, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while True:
            now = listeners(self.root_pid)
            at = time.monotonic() - self._start
            self.seen |= now
            for listener in now:
                self.lifetime[listener] = (self.lifetime.get(listener, (at, at))[0], at)
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> ListenerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    process = subprocess.Popen(command)
    with ListenerSampler(process.pid) as sampler:
        code = process.wait()
    print(f"\n{len(sampler.seen)} listener(s) in {time.monotonic() - sampler._start:.0f} s (exit code {code}):")
    for listener in sorted(sampler.seen, key=lambda l: (sampler.lifetime[l], l.pid, l.port)):
        first, last = sampler.lifetime[listener]
        print(f"  pid {listener.pid} {listener.process}: {listener.where()}  seen {first:.1f}-{last:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
