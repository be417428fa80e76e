#!/usr/bin/env python3
"""Checks that the crate's `rust-version` is true for the library and the `iqm-auth` binary: no
crate they build with (normal and build dependencies, every feature on, so the `cli` feature's
too) declares a newer one. Dev-dependencies are left out on purpose: Cargo.toml says what they
need."""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--all-features"],
    check=True, capture_output=True, text=True).stdout)
ours = next(p for p in meta["packages"] if p["name"] == "iqm-auth")
declared = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"]}
tree = subprocess.run(
    ["cargo", "tree", "--edges", "normal,build", "--all-features",
     "--prefix", "none", "--format", "{p}"],
    check=True, capture_output=True, text=True).stdout
too_new = []
for line in sorted(set(tree.splitlines())):
    name, _, rest = line.partition(" v")
    needs = declared.get((name, rest.split(" ")[0]))
    if needs and version(needs) > version(ours["rust_version"]):
        too_new.append(f"{name} {rest.split(' ')[0]} needs {needs}")
if too_new:
    sys.exit(f"rust-version {ours['rust_version']} is not enough for: " + ", ".join(too_new))
print(f"rust-version {ours['rust_version']} covers every dependency of the library and the binary")
