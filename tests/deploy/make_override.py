#!/usr/bin/env python3
"""Writes the compose override of the container test to stdout.

Every service of deploy/docker-compose.yml that the test runs (server,
worker) is put on the host network (addresses come from the EFFADAM_*
variables, all 127.0.0.1), the server's data volume becomes a bind mount of
--data (to read its summary), and the workers' --metrics_listen is made
empty: 4 replicas on one host network cannot share one port, and
Prometheus in the test scrapes the server. With --metrics 0 the server's is
emptied too. (--metrics_linger goes with --metrics_listen.) The commands are otherwise the base file's, so
the test runs the same flags a user and the Kubernetes manifests do.

pytorch-worker (the `pytorch` profile) is treated as worker.

server-shard1 (the `sharded` profile) listens on ${EFFADAM_SHARD1_LISTEN}
instead, since on one host network the two servers cannot share a port,
without metrics, its data volume a bind mount of --data_shard1.
"""
import argparse
import sys

import yaml


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--compose", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--data_shard1", required=True)
    p.add_argument("--metrics", type=int, choices=(0, 1), required=True)
    a = p.parse_args()
    with open(a.compose) as f:
        base = yaml.safe_load(f)

    def command(service, keep_metrics):
        cmd = base["services"][service]["command"]
        # Compose interpolates the override too: the base file's
        # ${VAR:-default} pass through unchanged. Without metrics,
        # --metrics_listen is given empty: the server's default port would
        # clash between two servers on one host network.
        if keep_metrics:
            return cmd
        return [("--metrics_listen=" if c.startswith("--metrics_listen=")
                 else c) for c in cmd if not c.startswith("--metrics_linger=")]

    override = {
        "version": base["version"],
        "services": {
            "server": {
                "network_mode": "host",
                "command": command("server", a.metrics == 1),
                "volumes": [f"{a.data}:/var/lib/effadam"],
            },
            "worker": {
                "network_mode": "host",
                "command": command("worker", False),
            },
            # The `pytorch` profile's workers, like the C++ ones.
            "pytorch-worker": {
                "network_mode": "host",
                "command": command("pytorch-worker", False),
            },
            "server-shard1": {
                "network_mode": "host",
                "command": [
                    "--listen=${EFFADAM_SHARD1_LISTEN}"
                    if c.startswith("--listen=") else c
                    for c in command("server-shard1", False)],
                "volumes": [f"{a.data_shard1}:/var/lib/effadam"],
            },
            # Not started by the test; on the host network too so that no
            # service uses compose's default bridge network and compose does
            # not create it.
            "prometheus": {"network_mode": "host"},
            "grafana": {"network_mode": "host"},
        },
    }
    yaml.safe_dump(override, sys.stdout, default_flow_style=False, sort_keys=False)


if __name__ == "__main__":
    main()
