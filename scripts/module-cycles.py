#!/usr/bin/env python3
"""The module `use` graph of a crate's src/ and its cycles: modules import
downward only (STYLE.md), so `make test` fails on any cycle, parent <-> child
included. Usage: scripts/module-cycles.py <crate>/src [--docs]; exit 1 on a cycle.
Edges: `use`/`pub use` paths (incl. grouped `{...}`), `super::x`, `crate::x::`
references in code. With --docs, references inside comments count too.
`#[cfg(test)] mod tests` files (src/**/tests.rs) are skipped."""
import os, re, sys
src = sys.argv[1]; docs = '--docs' in sys.argv
files = {}
for root, _, names in os.walk(src):
    for n in names:
        if not n.endswith('.rs'): continue
        p = os.path.join(root, n); rel = os.path.relpath(p, src)[:-3]
        parts = rel.split(os.sep)
        if parts[0] in ('main', 'bin') or parts[-1] == 'tests': continue
        if parts == ['lib']: mod = ['crate']
        else:
            if parts[-1] == 'mod': parts = parts[:-1]
            mod = ['crate'] + parts
        files['::'.join(mod)] = p
mods = set(files)
def resolve(cur, path):
    segs = path.split('::'); base = cur.split('::')
    if segs[0] == 'crate': base, segs = ['crate'], segs[1:]
    else:
        while segs and segs[0] == 'super': base, segs = base[:-1], segs[1:]
        if segs and segs[0] == 'self': segs = segs[1:]
    best = '::'.join(base)
    for s in segs:
        cand = best + '::' + s
        if cand in mods: best = cand
        else: break
    return best
def expand(prefix, body):
    # expand a use tree "a::{b, c::{d, e}}" into paths
    out = []; depth = 0; cur = ''; items = []
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0: items.append(cur); cur = ''
        else: cur += ch
    items.append(cur)
    for it in items:
        it = it.strip()
        if not it: continue
        m = re.match(r'^(.*?)::\{(.*)\}$', it, re.S)
        if m: out += expand(prefix + m.group(1) + '::', m.group(2))
        elif it.startswith('{') and it.endswith('}'): out += expand(prefix, it[1:-1])
        else: out.append(prefix + re.split(r'\s+as\s+', it)[0])
    return out
graph = {m: set() for m in mods}
for mod, p in files.items():
    text = open(p).read()
    if not docs:
        text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', text, flags=re.S) if 'mod tests {' in text else text
    paths = []
    for m in re.finditer(r'\buse\s+([^;]+);', text):
        paths += expand('', m.group(1).replace('\n', ' '))
    for m in re.finditer(r'\b((?:crate|super)(?:::super)*(?:::[A-Za-z_][A-Za-z0-9_]*)+)', text):
        paths.append(m.group(1))
    for path in paths:
        path = path.strip()
        if not (path.startswith('crate') or path.startswith('super') or path.startswith('self')):
            # a child module named directly: `use child::X` / `child::f()`
            first = path.split('::')[0]
            if mod + '::' + first in mods: path = 'self::' + path
            else: continue
        t = resolve(mod, path)
        if t != mod: graph[mod].add(t)
# bare child references like `memory::ScalerMemory` / `surge::watch(` in code
for mod, p in files.items():
    text = open(p).read()
    if not docs: text = re.sub(r'//[^\n]*', '', text)
    for child in [m for m in mods if m.startswith(mod + '::') and m.count('::') == mod.count('::') + 1]:
        name = child.rsplit('::', 1)[1]
        if re.search(r'(?<![:\w])' + name + r'::', text): graph[mod].add(child)
for m in sorted(graph):
    print(f"{m} -> {', '.join(sorted(graph[m])) or '(none)'}")
# cycles: strongly connected components + self-evident 2-cycles
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in sorted(graph):
    if v not in index: sc(v)
print()
if not sccs: print(f"cycles ({'code+doc comments' if docs else 'code'}): none")
for c in sccs:
    pairs = [(a, b) for a in c for b in c if a < b and b in graph[a] and a in graph[b]]
    print(f"CYCLE among {c}; two-way edges: {pairs}")
sys.exit(1 if sccs else 0)
