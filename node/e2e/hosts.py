"""Where the validators of a scenario live: Linux network namespaces or loopback.

:class:`NamespaceHosts` (root and ``ip`` needed): one namespace ``bcfl<tag>n<i>`` per
validator, a veth pair into one bridge ``bcfl<tag>br``, addresses from one /24 of
198.18.0.0/15 (the bridge takes .1, validator i takes .10+i; no route to anywhere else).
Partitions are iptables DROP rules inside the namespaces (blackhole routes when iptables is
missing); slow links are ``tc tbf`` on both ends of a veth; lossy links use the node's
test-only fault layer (this kernel lacks netem). Everything is removed by :meth:`close`.

:class:`LoopbackHosts`: every validator on 127.0.0.1 (like ``bcfl localnet``); partitions,
delay and loss are emulated by the node's fault layer (``BCFL_TEST_FAULT_FILE``).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from pathlib import Path

from node.byzantine import write_fault_file

NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
CMD_TIMEOUT_S = 10.0
TBF_BURST = "16kb"
TBF_LATENCY = "200ms"


class HostsError(Exception):
    """Namespaces could not be set up (the reason is said plainly)."""


def get_namespace_unavailable_reason() -> str | None:
    """None if namespaces can be used here; otherwise why not."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and result.returncode != 0:
        raise HostsError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


class Hosts:
    """Common part: per-node fault files and the cut/slow/lossy bookkeeping."""

    mode = "abstract"

    def __init__(self, n: int, workdir: Path) -> None:
        self.n = n
        self.fault_files = [workdir / f"fault{i}.json" for i in range(n)]
        self.cuts: set[tuple[int, int]] = set()
        self.lossy: dict[int, tuple[float, float]] = {}
        self.deaf: set[int] = set()
        self._write_faults()

    def _write_faults(self) -> None:
        for i, path in enumerate(self.fault_files):
            links: dict[tuple[int, int], tuple[float, float]] = {}
            for j in range(self.n):
                if j == i:
                    continue
                delay, loss = self.lossy.get(i, self.lossy.get(j, (0.0, 0.0)))
                if ((i, j) in self.cuts and self.mode == "loopback") or j in self.deaf:
                    loss = 1.0
                if delay or loss:
                    links[(i, j)] = (delay, loss)
            write_fault_file(path, links)

    def get_host(self, i: int) -> str:
        raise NotImplementedError

    def get_api_url(self, i: int, port: int) -> str:
        return f"http://{self.get_host(i)}:{port}"

    def wrap(self, i: int, argv: list[str]) -> list[str]:
        return argv

    def partition(self, sides: list[list[int]]) -> None:
        """Cut every link between different sides (both directions)."""
        for a_side in sides:
            for b_side in sides:
                if a_side is not b_side:
                    self.cuts |= {(a, b) for a in a_side for b in b_side}
        self._apply_cuts()
        self._write_faults()

    def heal(self) -> None:
        self.cuts.clear()
        self._apply_cuts()
        self._write_faults()

    def _apply_cuts(self) -> None:
        pass

    def set_lossy(self, i: int, delay_s: float, loss: float) -> None:
        self.lossy[i] = (delay_s, loss)
        self._write_faults()

    def clear_lossy(self, i: int) -> None:
        self.lossy.pop(i, None)
        self._write_faults()

    def set_deaf(self, i: int, deaf: bool) -> None:
        """One-way loss (fault layer in both modes: TCP cannot be cut one way)."""
        if deaf:
            self.deaf.add(i)
        else:
            self.deaf.discard(i)
        self._write_faults()

    def set_slow(self, i: int, rate_kbit: int, delay_s: float) -> None:
        self.set_lossy(i, delay_s, 0.0)

    def clear_slow(self, i: int) -> None:
        self.clear_lossy(i)

    def close(self) -> None:
        pass


class LoopbackHosts(Hosts):
    mode = "loopback"

    def get_host(self, i: int) -> str:
        return "127.0.0.1"


class NamespaceHosts(Hosts):
    mode = "netns"

    def __init__(self, n: int, workdir: Path, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.tag = f"{rng.randrange(16**4):04x}"
        self.subnet = self._pick_subnet(rng)
        hosts = list(self.subnet.hosts())
        self.bridge_addr = str(hosts[0])
        self.addrs = [str(hosts[9 + i]) for i in range(n)]
        self.bridge = f"bcfl{self.tag}br"
        self.namespaces = [f"bcfl{self.tag}n{i}" for i in range(n)]
        self.iptables = shutil.which("iptables")
        self.slowed: set[int] = set()
        self._created: list[tuple[str, str]] = []  # ("ns" | "link", name), for close()
        super().__init__(n, workdir)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _pick_subnet(rng: random.Random) -> ipaddress.IPv4Network:
        used = _run("ip", "-4", "route", "show").stdout
        for _ in range(64):
            subnet = list(NETWORK.subnets(new_prefix=24))[rng.randrange(1, 512)]
            if str(subnet) not in used:
                return subnet
        raise HostsError("no free /24 in 198.18.0.0/15")

    def _setup(self) -> None:
        prefix = self.subnet.prefixlen
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._created.append(("link", self.bridge))
        _run("ip", "addr", "add", f"{self.bridge_addr}/{prefix}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            _run("ip", "netns", "add", ns)
            self._created.append(("ns", ns))
            outer, inner = f"bcfl{self.tag}h{i}", f"bcfl{self.tag}v{i}"
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self._created.append(("link", outer))
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "link", "set", outer, "master", self.bridge)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.addrs[i]}/{prefix}",
                 "dev", inner)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def get_host(self, i: int) -> str:
        return self.addrs[i]

    def wrap(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i], *argv]

    def _ns(self, i: int, *argv: str, check: bool = True) -> None:
        _run("ip", "netns", "exec", self.namespaces[i], *argv, check=check)

    def _apply_cuts(self) -> None:
        for i in range(self.n):
            if self.iptables:
                self._ns(i, "iptables", "-F", "INPUT")
                self._ns(i, "iptables", "-F", "OUTPUT")
            else:
                for j in range(self.n):
                    if j != i:
                        self._ns(i, "ip", "route", "del", "blackhole", f"{self.addrs[j]}/32",
                                 check=False)
            for a, b in sorted(self.cuts):
                if a != i:
                    continue
                if self.iptables:
                    self._ns(i, "iptables", "-A", "OUTPUT", "-d", self.addrs[b], "-j", "DROP")
                    self._ns(i, "iptables", "-A", "INPUT", "-s", self.addrs[b], "-j", "DROP")
                else:
                    self._ns(i, "ip", "route", "add", "blackhole", f"{self.addrs[b]}/32")

    def set_slow(self, i: int, rate_kbit: int, delay_s: float) -> None:
        """A real rate limit (tc tbf) on both directions of node i's link."""
        rate = f"{rate_kbit}kbit"
        for argv in (["tc", "qdisc", "replace", "dev", f"bcfl{self.tag}h{i}", "root"],
                     ["ip", "netns", "exec", self.namespaces[i], "tc", "qdisc", "replace",
                      "dev", f"bcfl{self.tag}v{i}", "root"]):
            _run(*argv, "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY)
        self.slowed.add(i)

    def clear_slow(self, i: int) -> None:
        _run("tc", "qdisc", "del", "dev", f"bcfl{self.tag}h{i}", "root", check=False)
        self._ns(i, "tc", "qdisc", "del", "dev", f"bcfl{self.tag}v{i}", "root", check=False)
        self.slowed.discard(i)

    def close(self) -> None:
        """Delete every namespace and link this object made (also after a partial setup)."""
        for what, name in reversed(self._created):
            if what == "ns":
                _run("ip", "netns", "del", name, check=False)
            else:
                _run("ip", "link", "del", name, check=False)
        self._created.clear()


def find_leftovers() -> list[str]:
    """Namespaces and links named bcfl* (for tests: nothing must be left behind)."""
    names = _run("ip", "netns", "list", check=False).stdout.split()
    links = _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
    found = [n for n in names if n.startswith("bcfl")]
    found += [line.split(":")[1].strip().split("@")[0] for line in links
              if line.split(":")[1].strip().startswith("bcfl")]
    return found
