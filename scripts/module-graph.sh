#!/usr/bin/env bash
# The module graph of src/: which top-level module uses which (`crate::X` and `super::X`
# paths from a module's own files, tests included), then every cycle between two modules.
#   scripts/module-graph.sh          edges, then cycles ("none" when there is none)
# Exit code 1 when there is a cycle, so a check can hold the house to it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 - <<'PY'
import pathlib, re, sys
src = pathlib.Path("src")
def module(path):
    parts = path.relative_to(src).with_suffix("").parts
    return parts[0] if parts[0] not in ("lib", "main") else None
mods = sorted({m for p in src.rglob("*.rs") if (m := module(p))})
edges = {m: set() for m in mods}
for p in src.rglob("*.rs"):
    m = module(p)
    if m is None:
        continue
    # Code only: comments (// and //!, ///) name modules without using them.
    text = "\n".join(line.split("//", 1)[0] for line in p.read_text().splitlines())
    # Top-level files' `super::` is the crate; a submodule's is its own module.
    depth = len(p.relative_to(src).parts)
    for used in re.findall(r"\bcrate::(\w+)", text):
        if used in edges and used != m:
            edges[m].add(used)
    if depth == 1:
        for used in re.findall(r"\bsuper::(\w+)", text):
            if used in edges and used != m:
                edges[m].add(used)
for m in mods:
    print(f"{m:10} -> {', '.join(sorted(edges[m])) or '-'}")
cycles = sorted({tuple(sorted((a, b))) for a in mods for b in edges[a] if a in edges[b]})
print("cycles:", "; ".join(f"{a} <-> {b}" for a, b in cycles) or "none")
sys.exit(1 if cycles else 0)
PY
