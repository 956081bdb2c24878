#!/usr/bin/env python3
"""File-level import graph of sim/src: edges from `crate::`/`super::`/`self::` paths.

Usage: python3 sim/tools/deps.py [sim/src] [--list]. Prints every circle (a
strongly connected set of files) and each member's imports inside it."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'sim/src'
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            parts = rel[:-3].split('/')
            if parts[-1] == 'mod':
                parts = parts[:-1]
            if parts in (['lib'], ['main']):
                parts = []
            files[tuple(parts)] = rel

def strip_tests(src):
    i = src.find('#[cfg(test)]')
    return src if i < 0 else src[:i]

def strip_comments(src):
    return re.sub(r'//[^\n]*', '', src)

def inline_mods(src):
    """Spans of inline `mod name { ... }` blocks: (start, end, name)."""
    spans = []
    for m in re.finditer(r'\bmod\s+([a-z_][a-z_0-9]*)\s*\{', src):
        depth, i = 0, m.end() - 1
        while i < len(src):
            depth += {'{': 1, '}': -1}.get(src[i], 0)
            if depth == 0:
                break
            i += 1
        spans.append((m.start(), i, m.group(1)))
    return spans

def paths_in(src):
    """(position, path) of every path naming a module of this crate."""
    out = []
    # expand `use crate::{a::b, c}` groups (one level is enough here)
    for m in re.finditer(r'\b(crate|super|self)::\{([^}]*)\}', src):
        for item in m.group(2).split(','):
            item = item.strip()
            if item:
                out.append((m.start(), m.group(1) + '::' + item))
    for m in re.finditer(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z_0-9]*)+)', src):
        out.append((m.start(), m.group(1) + m.group(2)))
    # `use child::x` / `pub use child::{..}`: a path relative to this module
    for m in re.finditer(r'\buse\s+([a-z_][a-z_0-9]*)((?:::[A-Za-z_][A-Za-z_0-9]*)*)::', src):
        if m.group(1) not in ('crate', 'super', 'self', 'std', 'core', 'alloc'):
            out.append((m.start(), 'self::' + m.group(1) + m.group(2)))
    return out

def resolve(mod, path):
    segs = path.split('::')
    if segs[0] == 'crate':
        base, rest = [], segs[1:]
    elif segs[0] == 'super':
        base, rest = list(mod[:-1]), segs[1:]
        while rest and rest[0] == 'super':
            base, rest = base[:-1], rest[1:]
    else:  # self::
        base, rest = list(mod), segs[1:]
    best = tuple(base)
    for i in range(1, len(rest) + 1):
        cand = tuple(base + rest[:i])
        if cand in files:
            best = cand
    return best

edges = {}
for mod, rel in sorted(files.items()):
    src = strip_comments(strip_tests(open(os.path.join(root, rel)).read()))
    deps = set()
    spans = inline_mods(src)
    for pos, p in paths_in(src):
        inner = tuple(n for (a, b, n) in spans if a < pos < b)
        t = resolve(mod + inner, p)
        if t != mod and t in files and t != ():
            # a parent module declaring its children is containment, not an import
            deps.add(t)
    edges[mod] = deps

name = lambda m: '::'.join(m) or 'lib'
# cycles: Tarjan SCC
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in edges:
    if v not in index: sc(v)
if '--list' in sys.argv:
    for mod in sorted(edges, key=name):
        if mod == (): continue
        print(f"{name(mod):28} -> {', '.join(sorted(name(d) for d in edges[mod])) or '(none)'}")
print(f"cycles: {len(sccs)}")
for c in sccs:
    members = set(c)
    print('  cycle:', ', '.join(sorted(name(m) for m in c)))
    for m in sorted(c, key=name):
        back = sorted(name(d) for d in edges[m] if d in members)
        print(f"    {name(m)} -> {', '.join(back)}")
