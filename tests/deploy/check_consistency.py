#!/usr/bin/env python3
"""The Kubernetes manifests and deploy/docker-compose.yml must run the same
commands: the same flags in the same order, with the ConfigMap's values
equal to the compose defaults. Only the addresses and the rank differ by
design (compose: the service name "server" and --rank=-1; Kubernetes: the
StatefulSet pod's stable name and the Indexed Job's completion index)."""
import argparse
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Flags whose values differ on purpose: the workers' addresses, and the
# server's linger, which on Kubernetes keeps the finished server up until
# the StatefulSet is deleted (deploy/README.md, Lifecycle).
DIFFER = {"server": {"--metrics_linger"}, "worker": {"--server", "--rank"}}


def read_env_file(path):
    """KEY=VALUE lines (the configMapGenerator's env file)."""
    data = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                data[key] = value
    return data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--k8s-args", required=True)
    a = p.parse_args()
    with open(os.path.join(ROOT, "deploy/docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    cm = read_env_file(os.path.join(ROOT, "deploy/k8s/training.env"))
    with open(a.k8s_args) as f:
        k8s = json.load(f)
    failures = 0
    for svc in ("server", "worker"):
        # Compose ${VAR:-default} -> default; k8s $(VAR) -> the ConfigMap value.
        c_args = [re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", lambda m: m.group(2), x)
                  for x in compose["services"][svc]["command"]]
        k_args = [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: cm.get(m.group(1), m.group(0)), x)
                  for x in k8s[svc]]
        # Compose variables used must be ConfigMap keys too (same names).
        for x in compose["services"][svc]["command"]:
            for var in re.findall(r"\$\{([A-Z0-9_]+):-", x):
                if var.endswith(("_LISTEN", "_ADDR")):
                    continue  # addresses: set per environment
                if var not in cm:
                    print(f"FAIL {svc}: compose variable {var} is not in the ConfigMap")
                    failures += 1
        c_flags = [x.split("=", 1)[0] for x in c_args]
        k_flags = [x.split("=", 1)[0] for x in k_args]
        if c_flags != k_flags:
            print(f"FAIL {svc}: flags differ:\n  compose {c_flags}\n  k8s     {k_flags}")
            failures += 1
            continue
        for c, k in zip(c_args, k_args):
            flag = c.split("=", 1)[0]
            if flag in DIFFER[svc]:
                continue
            if c != k:
                print(f"FAIL {svc}: compose {c} vs k8s {k}")
                failures += 1
        print(f"ok   {svc}: {len(c_args)} flags, the same in compose and Kubernetes")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
