#!/usr/bin/env python3
"""The layer lint of issue 20 (ARCHITECTURE: one shape for every service).

Fails (exit 1, one line per violation) when

  * a transport module (services/*/src/grpc.rs, services/escrow/src/webhook_http.rs,
    any file under a grpc/ directory of a service) holds SQL text, runs a statement
    through sqlx (`sqlx::query*`, `raw_sql`, `QueryBuilder`; naming the pool or
    connection it hands on is fine), or calls (or imports) a storage function that
    is not a read (READ_PREFIXES);
  * a transport module is longer than MAX_TRANSPORT_LINES;
  * the modules of one crate (services/*, shared/*, sandbox/*) import each other in a
    circle. The nodes are the module files; the edges are `crate::` and `super::`
    paths (in `use` and in code), resolved to the longest existing module file and
    through a module's `pub use` re-exports. `mod` declarations, a parent's `pub use`
    of its own child, paths inside comments and strings, and `#[cfg(test)] mod` blocks
    are not edges.

Usage: scripts/check-layers.py [--root DIR] [--self-test]
Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

# A transport module may call these storage functions (reads) and no others.
READ_PREFIXES = (
    "get_",
    "load_",
    "list_",
    "find_",
    "read_",
    "page_",
    "count_",
    "exists_",
    "search_",
    "fetch_",
)
MAX_TRANSPORT_LINES = 800

# What runs a statement. A transport module may name sqlx's connection types (the
# pool it hands to the pipeline, the transaction it passes to app::), never these.
SQLX_EXECUTION = re.compile(
    r"(?<![A-Za-z0-9_:])sqlx\s*::\s*(query\w*|raw_sql|QueryBuilder|Execute|Executor)\b"
)
# Crates are the directories holding a Cargo.toml and a src/ under these.
CRATE_PARENTS = ("services", "shared", "sandbox")
# Transport modules, relative to the repository root (fnmatch-like, see is_transport).
TRANSPORT_FILES = ("services/*/src/grpc.rs", "services/escrow/src/webhook_http.rs")
TRANSPORT_DIRS = ("grpc",)
# SQL text: one of these keywords, upper case, followed by white space, at the start of
# a string literal or after white space or an opening parenthesis.
SQL_TEXT = re.compile(r"(?:^|[\s(])(SELECT|INSERT|UPDATE|DELETE|WITH)\s")

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


# --------------------------------------------------------------------------- lexing


@dataclass
class Lexed:
    """A Rust file with comments removed and string literals emptied (same lines)."""

    code: str
    strings: list[tuple[int, str]]  # (line, content) of every string literal


def lex(text: str) -> Lexed:
    out: list[str] = []
    strings: list[tuple[int, str]] = []
    i, n, line = 0, len(text), 1

    def keep_newlines(chunk: str) -> str:
        return "\n" * chunk.count("\n")

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(keep_newlines(text[i:j]))
            line += text.count("\n", i, j)
            i = j
            continue
        raw = re.match(r'(?:b|c)?r(#*)"', text[i:i + 300]) if c in "bcr" else None
        if raw and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + raw.group(1)
            start = i + raw.end()
            end = text.find(close, start)
            end = n if end < 0 else end
            strings.append((line, text[start:end]))
            out.append('""' + keep_newlines(text[i:end + len(close)]))
            line += text.count("\n", i, end + len(close))
            i = end + len(close)
            continue
        if c == '"' or (c in "bc" and text.startswith('"', i + 1)
                        and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + (1 if c == '"' else 2)
            start = j
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            strings.append((line, text[start:j]))
            out.append('""' + keep_newlines(text[i:j + 1]))
            line += text.count("\n", i, j + 1)
            i = j + 1
            continue
        if c == "'":
            # A char literal ('x', '\n', '\u{1F600}', '"') or a lifetime ('a).
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", text[i:i + 14])
            if m:
                out.append("' '")
                i += m.end()
                continue
        if c == "\n":
            line += 1
        out.append(c)
        i += 1
    return Lexed("".join(out), strings)


def line_of(code: str, pos: int) -> int:
    return code.count("\n", 0, pos) + 1


def matching_brace(code: str, open_pos: int) -> int:
    depth = 0
    for j in range(open_pos, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


CFG_TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{")


def without_test_modules(code: str) -> str:
    """`code` with the bodies of `#[cfg(test)] mod x { ... }` blanked (lines kept)."""
    while True:
        m = CFG_TEST_MOD.search(code)
        if not m:
            return code
        end = matching_brace(code, m.end() - 1)
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():end + 1]) + code[end + 1:]


# --------------------------------------------------------------------------- use trees


USE_ITEM = re.compile(r"(?:^|[;{}\]\s])((?:pub(?:\s*\([^)]*\))?\s+)?)use\s+([^;]*);")


def expand_use_tree(tree: str) -> list[tuple[list[str], str | None]]:
    """`a::{b, c::{d@e, self}}` -> [(['a','b'], None), (['a','c','d@e'], None), (['a','c'], None)]
    (parse_uses writes a rename `d as e` as `d@e` and splits it off)."""
    tree = re.sub(r"\s+", "", tree)
    results: list[tuple[list[str], str | None]] = []

    def split_top(s: str) -> list[str]:
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def walk(prefix: list[str], s: str) -> None:
        if not s:
            return
        brace = s.find("{")
        if brace >= 0:
            head = s[:brace].rstrip(":")
            body = s[brace + 1:s.rfind("}")]
            base = prefix + [p for p in head.split("::") if p]
            for part in split_top(body):
                walk(base, part)
            return
        parts = [p for p in s.split("::") if p]
        if parts and parts[-1] == "self":
            parts = parts[:-1]
        results.append((prefix + parts, None))

    walk([], tree)
    return results


def parse_uses(code: str) -> list[tuple[int, bool, list[str], str | None]]:
    """Every `use` item: (line, is_pub, path, alias)."""
    found = []
    for m in USE_ITEM.finditer(code):
        line = line_of(code, m.start(2))
        is_pub = bool(m.group(1).strip())
        body = m.group(2)
        # Keep renames visible after the spaces go: `x as y` -> `x@y`.
        body = re.sub(r"\s+as\s+(" + IDENT + r")", r"@\1", body)
        for path, _ in expand_use_tree(body):
            alias = None
            if path and "@" in path[-1]:
                last, alias = path[-1].split("@", 1)
                path = path[:-1] + [last]
            found.append((line, is_pub, path, alias))
    return found


# --------------------------------------------------------------------------- crates


@dataclass
class Module:
    crate: str
    rel: str  # path relative to the repository root
    path: tuple[str, ...]  # module path inside the crate
    lexed: Lexed
    code: str  # without #[cfg(test)] mod blocks
    reexports: dict[str, tuple[str, ...]] = field(default_factory=dict)


def module_path(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts == ["lib"]:
        return ()
    if parts and parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def find_crates(root: Path) -> dict[str, Path]:
    crates = {}
    for parent in CRATE_PARENTS:
        base = root / parent
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if (d / "Cargo.toml").is_file() and (d / "src").is_dir():
                crates[str(d.relative_to(root))] = d / "src"
    return crates


def load_crate(root: Path, crate: str, src: Path) -> dict[tuple[str, ...], Module]:
    """The library's module files (main.rs and src/bin/ are crates of their own)."""
    modules = {}
    for file in sorted(src.rglob("*.rs")):
        rel_parts = file.relative_to(src).parts
        if rel_parts[0] == "bin" or rel_parts == ("main.rs",):
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        lexed = lex(text)
        mp = module_path(src, file)
        modules[mp] = Module(crate, str(file.relative_to(root)), mp, lexed, without_test_modules(lexed.code))
    return modules


def absolute(current: tuple[str, ...], path: list[str]) -> tuple[str, ...] | None:
    """`crate::`/`super::`/`self::` path, as seen from module `current`, made absolute."""
    if not path:
        return None
    if path[0] == "crate":
        return tuple(path[1:])
    if path[0] in ("super", "self"):
        base = list(current)
        rest = list(path)
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest.pop(0)
        return tuple(base + rest)
    return None


def resolve(modules: dict[tuple[str, ...], Module], target: tuple[str, ...], hops: int = 0) -> tuple[str, ...]:
    """The longest module file `target` names, followed through `pub use` re-exports."""
    for k in range(len(target), -1, -1):
        if target[:k] in modules:
            mod = modules[target[:k]]
            if k < len(target) and hops < 8 and target[k] in mod.reexports:
                return resolve(modules, mod.reexports[target[k]] + target[k + 1:], hops + 1)
            return target[:k]
    return ()


def collect_reexports(modules: dict[tuple[str, ...], Module]) -> None:
    for mod in modules.values():
        for _, is_pub, path, alias in parse_uses(mod.code):
            if not is_pub or not path:
                continue
            if path[0] in ("crate", "super", "self"):
                full = absolute(mod.path, path)
            else:
                # `pub use child::Item` is relative to the module itself.
                full = mod.path + tuple(path)
            if full:
                mod.reexports[alias or full[-1]] = full


CODE_PATH = re.compile(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:\s*::\s*" + IDENT + r")+)")


def edges(modules: dict[tuple[str, ...], Module]) -> dict[tuple[str, ...], dict[tuple[str, ...], int]]:
    """module -> {module it depends on: first line that says so}."""
    graph: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {m: {} for m in modules}
    for mod in modules.values():
        def add(target_path: tuple[str, ...] | None, line: int) -> None:
            if target_path is None:
                return
            target = resolve(modules, target_path)
            if target != mod.path:
                graph[mod.path].setdefault(target, line)

        code = mod.code
        use_spans = []
        for m in USE_ITEM.finditer(code):
            use_spans.append((m.start(2), m.end(2)))
        for line, is_pub, path, _ in parse_uses(code):
            full = absolute(mod.path, path)
            if full is None:
                continue
            # A parent's `pub use` of its own child is the child's item shown
            # under the parent's name, not a dependency.
            if is_pub and full[:len(mod.path)] == mod.path and len(full) > len(mod.path):
                continue
            add(full, line)
        for m in CODE_PATH.finditer(code):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            path = [p.strip() for p in m.group(1).split("::")]
            add(absolute(mod.path, path), line_of(code, m.start()))
    return graph


def cycles(graph: dict) -> list[list]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict = {}
    low: dict = {}
    on_stack: set = set()
    stack: list = []
    found: list[list] = []
    counter = [0]

    sys.setrecursionlimit(10000)

    def visit(v) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# --------------------------------------------------------------------------- transport


def is_transport(rel: str) -> bool:
    parts = Path(rel).parts
    if len(parts) < 4 or parts[0] != "services" or parts[2] != "src":
        return False
    if any(Path(rel).match(p) and len(Path(p).parts) == len(parts) for p in TRANSPORT_FILES):
        return True
    return any(d in parts[3:-1] for d in TRANSPORT_DIRS)


STORAGE_CALL = re.compile(
    r"(?<![A-Za-z0-9_])((?:(?:crate|super|self)\s*::\s*)*(?:" + IDENT + r"\s*::\s*)*?storage(?:\s*::\s*" + IDENT + r")+)"
    r"\s*(?:::\s*<[^()]*>\s*)?\(")


def is_read(name: str) -> bool:
    return name.startswith(READ_PREFIXES)


def is_function_name(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z_][a-z0-9_]*", name))


def check_transport(mod: Module, modules: dict) -> list[str]:
    problems = []
    rel = mod.rel
    lines = mod.lexed.code.count("\n") + 1
    for line, content in mod.lexed.strings:
        m = SQL_TEXT.search(content)
        if m:
            problems.append(f"{rel}:{line}: SQL text in a transport module ({m.group(1)} ...): move it to storage/")
    code = mod.code
    for m in SQLX_EXECUTION.finditer(code):
        problems.append(
            f"{rel}:{line_of(code, m.start())}: `sqlx::{m.group(1)}` in a transport module: "
            "only storage/ runs statements"
        )
    # Storage modules named by a `use`: their calls are storage calls too.
    aliases: dict[str, str] = {}
    for line, _, path, alias in parse_uses(code):
        if "storage" not in path:
            continue
        after = path[path.index("storage") + 1:]
        if not after:
            aliases[alias or "storage"] = "storage"
            continue
        last = after[-1]
        full = absolute(mod.path, path) if path[0] in ("crate", "super", "self") else None
        if full is not None and full in modules:
            aliases[alias or last] = "::".join(path)
        elif is_function_name(last) and not is_read(last):
            problems.append(
                f"{rel}:{line}: imports storage write `{'::'.join(path)}`, not a read "
                f"({'/'.join(READ_PREFIXES)}): call an app:: use case")
    call = re.compile(
        r"(?<![A-Za-z0-9_:])(" + "|".join(re.escape(a) for a in sorted(aliases, key=len, reverse=True) if a != "storage")
        + r")((?:\s*::\s*" + IDENT + r")+)\s*(?:::\s*<[^()]*>\s*)?\(") if len(aliases) > (1 if "storage" in aliases else 0) else None
    found = [(m.start(), [p.strip() for p in m.group(1).split("::")]) for m in STORAGE_CALL.finditer(code)]
    if call:
        found += [(m.start(), [aliases[m.group(1)]] + [p.strip() for p in m.group(2).split("::") if p.strip()])
                  for m in call.finditer(code)]
    for pos, path in found:
        name = path[-1]
        owner = path[-2] if len(path) > 1 else ""
        # `storage::Row::new(..)` is a type's function, not a storage call.
        if owner[:1].isupper() or not is_function_name(name) or is_read(name):
            continue
        problems.append(
            f"{rel}:{line_of(code, pos)}: calls storage `{'::'.join(path)}`, not a read "
            f"({'/'.join(READ_PREFIXES)}): call an app:: use case")
    if lines > MAX_TRANSPORT_LINES:
        problems.append(f"{rel}: {lines} lines, over the {MAX_TRANSPORT_LINES} a transport module may have")
    return problems


# --------------------------------------------------------------------------- main


def by_line(problem: str) -> tuple[str, int]:
    m = re.match(r"([^:]+):(\d+):", problem)
    return (m.group(1), int(m.group(2))) if m else (problem.split(":")[0], 1 << 30)


def check(root: Path) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    stats = {"crates": 0, "modules": 0, "edges": 0, "transport": 0, "cycles": 0}
    for crate, src in find_crates(root).items():
        modules = load_crate(root, crate, src)
        collect_reexports(modules)
        stats["crates"] += 1
        stats["modules"] += len(modules)
        for mod in modules.values():
            if is_transport(mod.rel):
                stats["transport"] += 1
                problems += sorted(check_transport(mod, modules), key=by_line)
        graph = edges(modules)
        stats["edges"] += sum(len(e) for e in graph.values())
        for component in cycles(graph):
            stats["cycles"] += 1
            members = set(component)
            names = [modules[m].rel.split("/src/", 1)[1] for m in component]
            why = []
            for m in component:
                for target, line in sorted(graph[m].items()):
                    if target in members:
                        why.append(f"{modules[m].rel.split('/src/', 1)[1]}:{line} -> "
                                   f"{modules[target].rel.split('/src/', 1)[1]}")
            problems.append(f"{crate}: import circle between {', '.join(names)} ({'; '.join(why)})")
    return problems, stats


# --------------------------------------------------------------------------- self-test


FIXTURES = {
    "services/demo/Cargo.toml": "[package]\nname = \"demo\"\n",
    "services/demo/src/lib.rs": """
        pub mod grpc;
        mod storage;
        mod app;
        mod domain;
        pub use domain::Rule;
        pub const SPEC: u8 = 1;
    """,
    "services/demo/src/main.rs": "use demo::grpc; fn main() { crate::x(); }",
    "services/demo/src/domain/mod.rs": """
        mod rule;
        pub use rule::Rule;
        pub use self::rule::other;
    """,
    "services/demo/src/domain/rule.rs": """
        pub struct Rule;
        pub fn other() {}
        #[cfg(test)]
        mod tests {
            use crate::app::run;
        }
    """,
    "services/demo/src/storage/mod.rs": """
        mod rows;
        pub use rows::get_row;
        use crate::Rule;
        pub async fn insert_row() { sqlx::query("INSERT INTO x VALUES (1)"); }
    """,
    "services/demo/src/storage/rows.rs": """
        use super::{insert_row as _unused};
        pub fn get_row() { crate::app::run(); }
    """,
    "services/demo/src/app.rs": """
        use crate::{domain::Rule, storage::{self, get_row}};
        pub fn run() { storage::insert_row(); }
    """,
    "services/demo/src/grpc.rs": """
        // SELECT * FROM in a comment is fine, and so is sqlx::query in one.
        use crate::storage::{self, get_row, insert_row as put};
        use crate::storage::rows;
        const HELP: &str = "Update the supplier";
        fn lifetimes<'a>(x: &'a str) -> char { let _q = '"'; 'x' }
        async fn serve(pool: &sqlx::PgPool) {
            let _ = storage::get_row();
            let _ = storage::insert_row();
            let _ = rows::get_row();
            let _ = storage::Row::new();
            let _ = crate::storage::delete_all::<u8>(1);
            let _q = r#"
                SELECT id FROM x
            "#;
            let _w = "WITH latest AS (SELECT 1) SELECT 2";
            let _n = sqlx::query_scalar::<_, i64>(QUERY);
        }
    """,
    "services/big/Cargo.toml": "[package]\nname = \"big\"\n",
    "services/big/src/lib.rs": "pub mod grpc;\n",
    "services/big/src/grpc/mod.rs": "mod calls;\n" + "fn f() {}\n" * 801,
    "services/big/src/grpc/calls.rs": "fn g() { let _ = crate::storage::save(); }\n",
}


def self_test() -> int:
    failures = []

    def expect(condition: bool, what: str) -> None:
        if not condition:
            failures.append(what)

    lexed = lex('let s = "a // not a comment"; // SELECT 1\nlet r = r#"x "q" y"#; let c = \'"\'; /* "no" */ let l: &\'a str;')
    expect([s for _, s in lexed.strings] == ["a // not a comment", 'x "q" y'], f"lex strings: {lexed.strings}")
    expect("SELECT" not in lexed.code and "'a str" in lexed.code, f"lex code: {lexed.code!r}")
    expect(parse_uses("use crate::{a::{b, c as d}, e::self};") == [
        (1, False, ["crate", "a", "b"], None), (1, False, ["crate", "a", "c"], "d"), (1, False, ["crate", "e"], None)],
        f"use trees: {parse_uses('use crate::{a::{b, c as d}, e::self};')}")
    expect(without_test_modules("a\n#[cfg(test)]\nmod tests { use x; }\nb").count("\n") == 3, "test modules keep lines")
    expect(is_transport("services/demo/src/grpc.rs") and is_transport("services/x/src/grpc/calls.rs")
           and is_transport("services/escrow/src/webhook_http.rs") and not is_transport("services/x/src/app/grpc.rs")
           and not is_transport("shared/runtime/src/grpc.rs"), "transport modules")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, text in FIXTURES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(textwrap.dedent(text))
        problems, stats = check(root)
    text = "\n".join(problems)

    def has(fragment: str, line: str | None = None) -> bool:
        return any(fragment in p and (line is None or p.startswith(line)) for p in problems)

    expect(has("SQL text", "services/demo/src/grpc.rs:13:"), "raw-string SQL found")
    expect(has("SQL text in a transport module (WITH", "services/demo/src/grpc.rs:16:"), "WITH query found")
    expect(not has("SQL text", "services/demo/src/grpc.rs:2:") and not has("SQL text", "services/demo/src/grpc.rs:5:"),
           "comments and prose are not SQL")
    expect(not has("SQL text", "services/demo/src/storage"), "storage may hold SQL")
    expect(has("`sqlx::query_scalar`", "services/demo/src/grpc.rs:17:"), "a statement run in transport")
    expect(not has("`sqlx::", "services/demo/src/grpc.rs:7:"), "a pool handle is no statement")
    expect(sum("`sqlx::" in p for p in problems) == 1, "sqlx::query in a comment is not use")
    expect(has("imports storage write `crate::storage::insert_row`", "services/demo/src/grpc.rs:3:"), "imported write")
    expect(has("`storage::insert_row`", "services/demo/src/grpc.rs:9:"), "storage write call")
    expect(has("`crate::storage::delete_all`", "services/demo/src/grpc.rs:12:"), "turbofish write call")
    expect(not has("get_row") and not has("Row::new"), "reads and type functions are allowed")
    expect(has("`crate::storage::save`", "services/big/src/grpc/calls.rs:1:"), "files under grpc/ are transport")
    expect(has("services/big/src/grpc/mod.rs: 803 lines"), "oversized transport module")
    cycle = [p for p in problems if "import circle" in p]
    expect(len(cycle) == 1 and "app.rs" in cycle[0] and "storage/rows.rs" in cycle[0], f"one circle app<->rows: {cycle}")
    expect(not any("domain/rule.rs" in c for c in cycle), "cfg(test) modules are not edges")
    expect(not any("lib.rs" in c for c in cycle), "a parent's pub use of its child is no edge")
    expect(stats["crates"] == 2 and stats["transport"] == 3, f"stats {stats}")

    if failures:
        print("check-layers self-test FAILED:\n  " + "\n  ".join(failures) + "\nfound:\n" + text)
        return 1
    print(f"check-layers self-test: ok ({len(problems)} planted violations found)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: this script's repository)")
    parser.add_argument("--self-test", action="store_true", help="check the checker on fixtures")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    problems, stats = check(args.root)
    for p in problems:
        print(p)
    print(f"check-layers: {stats['crates']} crates, {stats['modules']} module files, "
          f"{stats['edges']} crate::/super:: edges, {stats['transport']} transport modules "
          f"(SQL text, statements, storage writes, over {MAX_TRANSPORT_LINES} lines), "
          f"{stats['cycles']} import circles: {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
