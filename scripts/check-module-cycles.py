#!/usr/bin/env python3
"""Fails if any crate in the workspace has a module cycle.

A module cycle is a top-level module that uses another which (directly or through a longer
loop) uses it back: store -> compact -> store. Cycles make a crate one knot that can only be
read, tested and split whole; the layering the crates' Layout docs promise ("each module
imports only those listed before it") is what this checks.

For each crate (a directory with Cargo.toml and src/), every src/**/*.rs file belongs to a
top-level module: src/x.rs and everything under src/x/ are `x`; lib.rs and main.rs are the
crate root, which only declares and re-exports, so it is not a node. A module depends on
another when its code names it:
- `crate::y` (also inside `use crate::{y, z::w}` groups);
- `crate::Name` where the root re-exports `Name` from `y` (`pub use y::Name`);
- `super::y` that climbs to the crate root (from src/x.rs, or `super::super::y` from a
  `mod tests` inside it).
Comments (doc comments included: an intra-doc link is not a dependency of the code) and
string literals are ignored. Test modules count: a test that needs a module is a dependency.

Usage: scripts/check-module-cycles.py [-v] [crate-dir ...]   (default: every crate)
-v prints each crate's module graph. Exit status 1 when a cycle is found. Python 3 stdlib only.
"""

import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line numbers."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}'), or a lifetime ('a), which is kept.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def brace_group(code, start):
    """The text inside the braces opening at `start`, and the index after the closing one."""
    depth, j = 0, start
    while j < len(code):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return code[start + 1:j], j + 1
        j += 1
    return code[start + 1:], len(code)


def group_heads(inner):
    """The first path segment of each item of a `use` group: `a, b::c, {d}` -> a, b, d."""
    heads, depth, item = [], 0, ""
    for ch in inner + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            item = item.strip()
            m = re.match(IDENT, item)
            if m:
                heads.append(m.group(0))
            elif item.startswith("{"):
                heads.extend(group_heads(item.strip("{}")))
            item = ""
        else:
            item += ch
    return heads


def names_after(code, at):
    """Path heads right after a `crate::`/`super::` prefix ending at `at`, with offsets."""
    m = re.match(IDENT, code[at:])
    if m:
        return [(m.group(0), at)]
    if code[at:at + 1] == "{":
        inner, _ = brace_group(code, at)
        return [(h, at) for h in group_heads(inner)]
    return []


def module_of(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    if len(rel) == 1:
        name = rel[0][:-3]
        return None if name in ("lib", "main") else name
    if rel[0] == "bin":
        return None
    return rel[0]


def file_depth(src, path):
    """How many module levels a file's own items sit below the crate root."""
    rel = os.path.relpath(path, src).split(os.sep)
    depth = len(rel)
    if rel[-1] in ("mod.rs", "lib.rs", "main.rs"):
        depth -= 1
    return depth


def root_reexports(src, modules):
    """`pub use m::{A, B as C}` in the crate root: re-exported name -> module `m`."""
    names = {}
    for root in ("lib.rs", "main.rs"):
        p = os.path.join(src, root)
        if not os.path.exists(p):
            continue
        code = strip_comments_and_strings(open(p, encoding="utf-8").read())
        for m in re.finditer(r"\bpub\s+use\s+(?:self::|crate::)?(" + IDENT + r")::", code):
            mod = m.group(1)
            if mod not in modules:
                continue
            rest = code[m.end():code.find(";", m.end())]
            for leaf in re.findall(r"(?:\bas\s+)?(" + IDENT + r")\s*(?=[,}]|$)", rest.strip()):
                names.setdefault(leaf, mod)
    return names


def crate_graph(crate_dir):
    src = os.path.join(crate_dir, "src")
    files = []
    for dirpath, _, filenames in os.walk(src):
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".rs")]
    modules = {module_of(src, f) for f in files} - {None}
    reexports = root_reexports(src, modules)
    edges = defaultdict(dict)  # module -> {module it uses: first place it does}

    for path in sorted(files):
        me = module_of(src, path)
        if me is None:
            continue
        text = open(path, encoding="utf-8").read()
        code = strip_comments_and_strings(text)
        base = file_depth(src, path)

        def use(target, offset):
            if target == me or target not in modules:
                return
            line = code.count("\n", 0, offset) + 1
            edges[me].setdefault(target, f"{os.path.relpath(path)}:{line}")

        for m in re.finditer(r"(?<![A-Za-z0-9_$])crate::", code):
            for name, at in names_after(code, m.end()):
                use(name if name in modules else reexports.get(name), at)

        # super:: climbs from the current module; only a climb to the root names another
        # top-level module. Inline `mod name { ... }` blocks add a level while open.
        inline = []  # brace depths at which inline modules opened
        depth = 0
        tokens = re.finditer(r"\bmod\s+" + IDENT + r"\s*\{|\{|\}|(?:\bsuper::)+", code)
        for t in tokens:
            s = t.group(0)
            if s.startswith("mod"):
                depth += 1
                inline.append(depth)
            elif s == "{":
                depth += 1
            elif s == "}":
                if inline and inline[-1] == depth:
                    inline.pop()
                depth -= 1
            else:
                climbs = s.count("super::")
                if climbs == base + len(inline):
                    for name, at in names_after(code, t.end()):
                        use(name if name in modules else reexports.get(name), at)
    return modules, edges


def cycles(modules, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def one_loop(comp, edges):
    """A shortest loop through the component's first module, as a list of modules."""
    start = comp[0]
    members = set(comp)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, {})):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return comp


def main(argv):
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    crates = args or sorted(
        d for d in os.listdir(".")
        if os.path.isfile(os.path.join(d, "Cargo.toml")) and os.path.isdir(os.path.join(d, "src"))
    )
    failed = False
    for crate in crates:
        modules, edges = crate_graph(crate)
        if verbose:
            print(f"{crate}:")
            for m in sorted(modules):
                print(f"  {m} -> {', '.join(sorted(edges.get(m, {}))) or '-'}")
        for comp in cycles(modules, edges):
            failed = True
            loop = one_loop(comp, edges)
            print(f"{crate}: module cycle {' -> '.join(loop)}", file=sys.stderr)
            for a, b in zip(loop, loop[1:]):
                print(f"    {a} -> {b}  ({edges[a][b]})", file=sys.stderr)
            if len(comp) > len(loop) - 1:
                print(f"    (all tangled together: {', '.join(comp)})", file=sys.stderr)
    if failed:
        return 1
    print(f"no module cycles in {len(crates)} crates ({', '.join(crates)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
