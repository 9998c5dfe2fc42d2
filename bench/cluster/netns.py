"""Emulated hosts on one machine: one network namespace per host, each
joined by a veth pair to a bridge in a separate "switch" namespace that has
no route out. tests/chaos_test.py and bench/cluster/ddp_vs_effadam.py use it.

Network(hosts, rate=...) also shapes every link with tc tbf on both ends:
on eth0 inside the host (what the host sends) and on the switch's end of
the veth (what the host receives), so each host has its own full-duplex
link of that rate and a host that many others send to is limited by its
own link, as on a switched cluster. The kernel this was written on has no
netem, so there is no added delay (netem_available() says whether the
running kernel has it).

Promises: close() deletes every namespace it made (the veths, the bridge
and the qdiscs go with them) and is safe to call twice; nothing outside
the namespaces it made is touched. Not thread-safe: one owner.
"""

import json
import os
import shutil
import subprocess


class NetworkError(Exception):
    pass


def run(argv, check_rc=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=30)
    if check_rc and r.returncode != 0:
        raise NetworkError("%s failed (%d): %s" % (
            " ".join(argv), r.returncode, r.stderr.decode().strip()))
    return r


def rate_bits(rate):
    """tc's '100mbit', '1gbit', '10gbit' -> bits per second."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for unit, scale in units.items():
        if rate.endswith(unit):
            try:
                value = float(rate[:-len(unit)])
            except ValueError:
                break
            if value > 0:
                return value * scale
    raise NetworkError("rate %r: expected a number followed by kbit, mbit or "
                       "gbit (tc's units), e.g. 100mbit" % rate)


def tbf_args(rate):
    """tc tbf parameters for `rate`: a bucket of at least 2 ms of the rate
    (a smaller one cannot reach high rates with the kernel's timer), and a
    queue of 20 ms."""
    burst = max(256 * 1024, int(rate_bits(rate) / 8 * 0.002))
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "20ms"]


class Network:
    """One namespace per host, veth pairs to a bridge in a switch
    namespace. ns[host], ip[host] and link[host] (the switch's end of the
    host's veth) name each host's parts."""

    def __init__(self, hosts, tag=None, subnet="10.77.0.", rate=None):
        if len(hosts) > 240:
            raise NetworkError("at most 240 hosts on one /24")
        tag = tag or "ech%d" % os.getpid()
        self.switch = tag + "-sw"
        self.rate = rate
        self.namespaces = []
        self.ns, self.ip, self.link = {}, {}, {}
        try:
            self._add(self.switch)
            run(["ip", "-n", self.switch, "link", "add", "br0", "type",
                 "bridge"])
            run(["ip", "-n", self.switch, "addr", "add", subnet + "1/24",
                 "dev", "br0"])
            run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for i, host in enumerate(hosts):
                ns = "%s-%s" % (tag, host)
                self._add(ns)
                veth = ("v%d%s" % (os.getpid() % 100000, host))[:15]
                run(["ip", "-n", self.switch, "link", "add", veth, "type",
                     "veth", "peer", "name", "eth0", "netns", ns])
                run(["ip", "-n", self.switch, "link", "set", veth, "master",
                     "br0"])
                run(["ip", "-n", self.switch, "link", "set", veth, "up"])
                ip = subnet + str(10 + i)
                run(["ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"])
                run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                if rate:
                    # Host -> switch (upload) and switch -> host (download).
                    run(["tc", "-n", ns, "qdisc", "add", "dev", "eth0",
                         "root"] + tbf_args(rate))
                    run(["tc", "-n", self.switch, "qdisc", "add", "dev", veth,
                         "root"] + tbf_args(rate))
                self.ns[host], self.ip[host], self.link[host] = ns, ip, veth
        except BaseException:
            self.close()
            raise

    def _add(self, ns):
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def exec_prefix(self, host):
        """argv prefix that runs a command on `host` (`ip netns exec`
        execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.ns[host]]

    def set_link(self, host, up):
        run(["ip", "-n", self.switch, "link", "set", self.link[host],
             "up" if up else "down"])

    def counters(self):
        """{host: (bytes the host sent, bytes it received)} so far, from
        the switch's ends of the veths (one `ip` call for every host)."""
        r = run(["ip", "-n", self.switch, "-j", "-s", "link", "show"])
        by_link = {}
        for dev in json.loads(r.stdout):
            stats = dev.get("stats64") or dev.get("stats")
            by_link[dev["ifname"]] = (stats["rx"]["bytes"],
                                      stats["tx"]["bytes"])
        return {host: by_link[link] for host, link in self.link.items()}

    def close(self):
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL, timeout=30)
        self.namespaces = []


def namespaces_available():
    """None when namespaces and veth pairs work here, else why not."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "'ip' (iproute2) is missing"
    probe = "ech%d-probe" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", probe], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        return "network namespaces unavailable: %s" % r.stderr.decode().strip()
    ok = subprocess.run(["ip", "-n", probe, "link", "add", "t0", "type",
                         "veth", "peer", "name", "t1"],
                        stderr=subprocess.PIPE)
    subprocess.run(["ip", "netns", "del", probe])
    if ok.returncode != 0:
        return "veth pairs unavailable: %s" % ok.stderr.decode().strip()
    return None


def netem_available():
    """Whether `tc qdisc add ... netem delay` works in this kernel."""
    probe = "ech%d-netem" % os.getpid()
    if run(["ip", "netns", "add", probe], check_rc=False).returncode != 0:
        return False
    try:
        return run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root",
                    "netem", "delay", "1ms"], check_rc=False).returncode == 0
    finally:
        run(["ip", "netns", "del", probe], check_rc=False)
