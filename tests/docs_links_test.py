#!/usr/bin/env python3
"""Every link between the project's documents resolves.

Checks, in every Markdown file of the repository and in the comments of
every source file: relative Markdown links ([text](path), anchors
stripped) and repository paths written in backticks or after "see"
(e.g. `server/membership.h`, docs/faults.md) must name files or folders
that exist. Points outside the repository (../) are errors: the project
never refers to files outside itself.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("common", "server", "worker", "sim", "python", "examples", "tests",
       "bench", "scripts", "docs", "deploy", "proto", "daemon")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*\w)" % "|".join(TOP))
LINK = re.compile(r"\]\(([^)\s]+)\)")
# The upper-case design notes the project started from live outside it.
OUTSIDE_DESIGN = re.compile(r"\bDESIGN\.md|\.\./shared/")
SOURCE_EXT = (".h", ".cc", ".py", ".sh", ".txt", ".yml", ".yaml", ".md")


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [f for f in out.splitlines() if f.endswith(SOURCE_EXT)]


def exists(path):
    return os.path.exists(os.path.join(ROOT, path))


def main():
    problems = []
    for rel in tracked_files():
        with open(os.path.join(ROOT, rel), encoding="utf-8",
                  errors="replace") as f:
            text = f.read()
        if OUTSIDE_DESIGN.search(text):
            problems.append("%s: refers to the design notes outside the "
                            "repository (docs/design.md is the project's)"
                            % rel)
        if rel.endswith(".md"):
            for target in LINK.findall(text):
                if re.match(r"[a-z]+://|#|mailto:", target):
                    continue
                target = target.split("#")[0]
                full = os.path.normpath(
                    os.path.join(os.path.dirname(rel), target))
                if full.startswith(".."):
                    problems.append("%s: link outside the repository: %s"
                                    % (rel, target))
                elif not exists(full):
                    problems.append("%s: broken link %s" % (rel, target))
        for match in PATH.finditer(text):
            path = match.group(1).rstrip(".")
            # `transport/grpc_security.{h,cc}` names two files; build outputs,
            # globs and patterns are not files of the tree.
            if text.startswith(".{", match.end(1)) or \
                    any(c in path for c in "*{<") or "/build" in path or \
                    path.endswith("/NAME.cc"):
                continue
            if not exists(path):
                problems.append("%s: names %s, which does not exist"
                                % (rel, path))
    for p in sorted(set(problems)):
        print(p)
    print("docs_links: %d problem(s)" % len(set(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
