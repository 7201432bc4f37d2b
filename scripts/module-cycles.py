#!/usr/bin/env python3
"""Fails (exit 1) when the modules of a crate import each other in a cycle.

    scripts/module-cycles.py actors/src

Reads every `crate::NAME` path in each top-level module of the crate (use lines, paths in
code and docs links alike, comments excluded) and looks for cycles in that graph. A cycle
means two modules cannot be read, tested or changed apart; switchyard's actors/ keeps its
graph a DAG in the direction of the mail (engine → tenant → campaign → scheduled queue →
ready queue → connection), with answers going back through Recipients of message types.
"""
import re
import sys
from pathlib import Path


def modules(src: Path):
    out = {}
    for f in sorted(src.glob("*.rs")):
        if f.stem in ("lib", "main"):
            continue
        out[f.stem] = [f]
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        out[d.name] = sorted(d.rglob("*.rs"))
    return out


def imports(files, names):
    found = set()
    for f in files:
        for line in f.read_text().splitlines():
            code = line.split("//", 1)[0]
            for m in re.finditer(r"\bcrate::(\w+)", code):
                found.add(m.group(1))
            # `use crate::{a, b::c}` groups
            for g in re.finditer(r"\bcrate::\{([^}]*)\}", code):
                for part in g.group(1).split(","):
                    head = part.strip().split("::")[0]
                    if head:
                        found.add(head)
    return {n for n in found if n in names}


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "actors/src")
    mods = modules(src)
    graph = {m: imports(files, mods) - {m} for m, files in mods.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    if cycles:
        for c in cycles:
            print(f"module cycle in {src}: " + " -> ".join(c))
        sys.exit(1)
    print(f"{src}: {len(graph)} modules, no import cycles")


if __name__ == "__main__":
    main()
