#!/usr/bin/env bash
# Checks the engine's source layout; prints one line per check, exits 1 when any check fails.
#
#   scripts/check-layout.sh [DIR]        check DIR (default engine/src, from the repo root)
#   scripts/check-layout.sh --self-test  run the checks on small fake trees and verify verdicts
#
# The checks:
#   a. No cycle among DIR's top-level modules. A top-level module is an entry of DIR: a file
#      `x.rs` or a folder `x/` (both together are one module `x`); lib.rs, main.rs and bin/ are
#      not modules. Module A depends on B when a file of A names `crate::B` (`use crate::B::..`,
#      `crate::B::f()`, and brace groups `use crate::{B, C::d}`, also across lines). Not counted:
#      `super::` paths, comments (doc links included), string and char literals, and code that
#      only builds for tests: items under `#[cfg(test)]` (e.g. `#[cfg(test)] mod tests { .. }`),
#      files declared `#[cfg(test)] mod x;` (with everything under them) and files with
#      `#![cfg(test)]`. Cycles between sub-modules inside one folder are not checked. A cycle
#      is printed as `module cycle: a -> b -> a`, followed by where each of its edges comes from.
#   b. Nothing under DIR/partition (the folder, and partition.rs if there is one) mentions
#      `http_ingress` or `crate::http` (a plain grep, comments included); skipped with a note
#      while neither exists.
#   c. No .rs file under DIR (bin/ included) is over 600 lines, except test code: files named
#      tests.rs and files under a folder named tests/.
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
MAX_LINES=600

usage() {
  echo "usage: scripts/check-layout.sh [--self-test] [DIR]   (DIR defaults to engine/src)" >&2
  exit 2
}

# ---- checks a and c (python3: Rust source needs comments and strings told apart) -------------
check_modules_and_lengths() {
  python3 - "$1" "$MAX_LINES" <<'PY'
import os, re, sys
from collections import deque

root, max_lines = sys.argv[1].rstrip("/") or "/", int(sys.argv[2])
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CHAR = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'")
RAW = re.compile(r'b?r(#*)"')

def blank(text):
    return re.sub(r"[^\n]", " ", text)

def strip(src):
    """The source with comments and the contents of string and char literals blanked out
    (newlines kept, so that offsets and line numbers stay those of the file)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        word_before = i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, j = 0, i
            while j < n:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                    if depth == 0:
                        break
                else:
                    j += 1
        elif c in "rb" and not word_before and RAW.match(src, i):
            m = RAW.match(src, i)
            end = src.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
        elif c == "'" and CHAR.match(src, i):
            j = CHAR.match(src, i).end()
        else:
            out.append(c)
            i += 1
            continue
        out.append(blank(src[i:j]))
        i = j
    return "".join(out)

def matching(text, i):
    """The index just past the bracket that closes the one at text[i]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for j in range(i, len(text)):
        ch = text[j]
        if ch in pairs:
            stack.append(pairs[ch])
        elif ch in ")]}":
            if stack:
                stack.pop()
            if not stack:
                return j + 1
    return len(text)

CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
ATTR = re.compile(r"\s*#\s*\[")
TEST_MOD = re.compile(r"\s*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;")

def drop_test_items(text):
    """`text` with each `#[cfg(test)]` item blanked, and the names of `#[cfg(test)] mod x;`."""
    test_mods = []
    pos = 0
    while True:
        m = CFG_TEST.search(text, pos)
        if not m:
            return text, test_mods
        j = m.end()
        while True:  # further attributes of the same item
            a = ATTR.match(text, j)
            if not a:
                break
            j = matching(text, a.end() - 1)
        decl = TEST_MOD.match(text, j)
        if decl:
            test_mods.append(decl.group(1))
            end = decl.end()
        else:
            end, depth = len(text), 0
            k = j
            while k < len(text):
                ch = text[k]
                if ch in "([":
                    depth += 1
                elif ch in ")]":
                    depth -= 1
                elif ch == "{" and depth == 0:
                    end = matching(text, k)
                    break
                elif ch == ";" and depth == 0:
                    end = k + 1
                    break
                elif ch == "}" and depth == 0:  # the end of an enclosing block
                    end = k
                    break
                k += 1
        text = text[: m.start()] + blank(text[m.start() : end]) + text[end:]
        pos = end

CRATE_PATH = re.compile(r"(?<![A-Za-z0-9_])crate\s*::\s*(" + IDENT + r")")
CRATE_GROUP = re.compile(r"(?<![A-Za-z0-9_])crate\s*::\s*\{")

def crate_mentions(text):
    """(name, offset) for each top-level name after `crate::`, brace groups included."""
    found = [(m.group(1), m.start(1)) for m in CRATE_PATH.finditer(text)]
    for m in CRATE_GROUP.finditer(text):
        start, end = m.end(), matching(text, m.end() - 1) - 1
        depth, element = 0, start
        for k in range(start, end + 1):
            ch = text[k] if k < end else ","
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == "," and depth == 0:
                name = re.match(r"\s*(" + IDENT + ")", text[element:k])
                if name:
                    found.append((name.group(1), element + name.start(1)))
                element = k + 1
    return found

def rel(path):
    return os.path.relpath(path, root)

def shown(path):
    return os.path.join(root, rel(path)) if root != "." else rel(path)

# Every .rs file under root, parents before children.
files = []
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".rs")]

# ---- a. module cycles ----
entries = sorted(os.listdir(root))
modules = sorted(
    {e[:-3] for e in entries if e.endswith(".rs") and os.path.isfile(os.path.join(root, e))}
    | {e for e in entries if os.path.isdir(os.path.join(root, e)) and e != "bin"}
    - {"lib", "main"}
)
module_set = set(modules)

def module_of(path):
    first = rel(path).split(os.sep)[0]
    name = first[:-3] if first.endswith(".rs") else first
    return name if name in module_set else None

test_only = set()  # files and folders (relative to root) that only build for tests
edges = {}  # (a, b) -> ["file:line", ...]
for path in files:
    r = rel(path)
    if any(r == t or r.startswith(t + os.sep) for t in test_only):
        continue
    src = open(path, encoding="utf-8", errors="replace").read()
    text = strip(src)
    if re.search(r"#\s*!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", text):
        test_only.add(r)
        continue
    text, test_mods = drop_test_items(text)
    base = os.path.basename(r)
    child_dir = os.path.dirname(r) if base in ("mod.rs", "lib.rs", "main.rs") else r[:-3]
    for name in test_mods:
        test_only.add(os.path.join(child_dir, name + ".rs"))
        test_only.add(os.path.join(child_dir, name))
    a = module_of(path)
    if a is None:
        continue
    for name, offset in crate_mentions(text):
        if name in module_set and name != a:
            line = text.count("\n", 0, offset) + 1
            edges.setdefault((a, name), []).append(f"{shown(path)}:{line}")

graph = {m: sorted({b for (a, b) in edges if a == m}) for m in modules}

def sccs():
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            out.append(comp)
    sys.setrecursionlimit(10000)
    for v in modules:
        if v not in index:
            visit(v)
    return out

def shortest_path(src, dst, allowed):
    prev, queue = {src: None}, deque([src])
    while queue:
        v = queue.popleft()
        if v == dst:
            path = []
            while v is not None:
                path.append(v)
                v = prev[v]
            return path[::-1]
        for w in graph[v]:
            if w in allowed and w not in prev:
                prev[w] = v
                queue.append(w)
    return None

cycles = set()
for comp in sccs():
    if len(comp) < 2:
        continue
    members = set(comp)
    for u in comp:
        for v in graph[u]:
            if v in members:
                path = shortest_path(v, u, members)  # v .. u, so u -> v .. u is a cycle
                cycle = [u] + path[:-1]
                k = cycle.index(min(cycle))
                cycles.add(tuple(cycle[k:] + cycle[:k]))

failed = False
if cycles:
    failed = True
    ordered = sorted(cycles, key=lambda c: (len(c), c))
    print(f"FAIL a. {len(ordered)} module cycle(s) among the top-level modules of {root}:")
    for c in ordered:
        print("module cycle: " + " -> ".join(c + (c[0],)))
    print("  where the edges of these cycles come from (first mention, +N more mentions):")
    cycle_edges = sorted({(c[i], c[(i + 1) % len(c)]) for c in ordered for i in range(len(c))})
    for a, b in cycle_edges:
        where = edges[(a, b)]
        more = f" (+{len(where) - 1} more)" if len(where) > 1 else ""
        print(f"  {a} -> {b}: {where[0]}{more}")
else:
    print(f"ok   a. no module cycle among the {len(modules)} top-level modules of {root} "
          f"({len(edges)} dependency edges)")

# ---- c. file lengths ----
def is_test_file(path):
    parts = rel(path).split(os.sep)
    return parts[-1] == "tests.rs" or "tests" in parts[:-1]

long = []
for path in files:
    if is_test_file(path):
        continue
    with open(path, "rb") as f:
        count = f.read().count(b"\n")
    if count > max_lines:
        long.append((count, shown(path)))
if long:
    failed = True
    print(f"FAIL c. {len(long)} .rs file(s) under {root} over {max_lines} lines "
          "(test files excepted):")
    for count, path in sorted(long, reverse=True):
        print(f"  {path}: {count} lines")
else:
    print(f"ok   c. no .rs file under {root} over {max_lines} lines (tests.rs and tests/ excepted)")

sys.exit(1 if failed else 0)
PY
}

# ---- check b ----------------------------------------------------------------------------------
check_partition() {
  local dir="$1" targets=()
  [[ -d "$dir/partition" ]] && targets+=("$dir/partition")
  [[ -f "$dir/partition.rs" ]] && targets+=("$dir/partition.rs")
  if ((${#targets[@]} == 0)); then
    echo "skip b. $dir/partition does not exist yet (nothing to grep for http_ingress)"
    return 0
  fi
  local hits
  hits="$(grep -rn "http_ingress\|crate::http" "${targets[@]}" || true)"
  if [[ -n "$hits" ]]; then
    echo "FAIL b. the partition module mentions http_ingress or crate::http:"
    sed 's/^/  /' <<<"$hits"
    return 1
  fi
  echo "ok   b. ${targets[*]} mention neither http_ingress nor crate::http"
}

check() {
  local dir="$1" rc=0
  if [[ ! -d "$dir" ]]; then
    echo "check-layout.sh: $dir is not a directory" >&2
    return 2
  fi
  # a and c print first; b's line goes between them so that the lines read a, b, c.
  local ac
  ac="$(check_modules_and_lengths "$dir")" || rc=1
  sed -n '/^\(ok   \|FAIL \)c\./,$!p' <<<"$ac"
  check_partition "$dir" || rc=1
  sed -n '/^\(ok   \|FAIL \)c\./,$p' <<<"$ac"
  if ((rc != 0)); then
    echo "check-layout.sh: FAILED ($dir)"
  fi
  return "$rc"
}

# ---- self-test --------------------------------------------------------------------------------
self_test() {
  local tmp failures=0 out rc
  tmp="$(mktemp -d)"
  SELF_TEST_TMP="$tmp"
  trap 'rm -rf "$SELF_TEST_TMP"' EXIT

  # 1. a -> b -> c -> a and b <-> c, through a path, a call and a multi-line brace group; lib.rs,
  #    main.rs and bin/ name everything and are not modules.
  mkdir -p "$tmp/cyclic/b" "$tmp/cyclic/bin"
  printf 'pub mod a;\npub mod b;\npub mod c;\n' >"$tmp/cyclic/lib.rs"
  printf 'use crate::a::A;\nfn main() {}\n' >"$tmp/cyclic/main.rs"
  printf 'use crate::c::C;\n' >"$tmp/cyclic/bin/tool.rs"
  printf 'use crate::b::thing;\npub struct A;\n' >"$tmp/cyclic/a.rs"
  printf 'mod inner;\npub fn thing() {}\n' >"$tmp/cyclic/b.rs"
  printf 'pub fn f() {\n    crate::c::g()\n}\n' >"$tmp/cyclic/b/inner.rs"
  printf 'use crate::{\n    a::{self, A},\n    b,\n};\npub fn g() {}\n' >"$tmp/cyclic/c.rs"

  # 2. a -> b -> c only: c's way back to a is in comments, strings, super:: paths and test code.
  mkdir -p "$tmp/acyclic/b" "$tmp/acyclic/c" "$tmp/acyclic/a/tests"
  printf 'use crate::b::x;\n' >"$tmp/acyclic/a.rs"
  printf 'mod inner;\npub use inner::x;\n' >"$tmp/acyclic/b/mod.rs"
  printf 'use crate::{\n    c::{self, y},\n    b,\n};\npub fn x() {}\n' >"$tmp/acyclic/b/inner.rs"
  cat >"$tmp/acyclic/c.rs" <<'RS'
//! Not [`crate::a`]; /* nor crate::a::f() */
use super::a as not_counted;
pub fn y() -> &'static str {
    let _quote = '"';
    "crate::a::f()"
}
#[cfg(test)]
mod more;
#[cfg(test)]
#[allow(unused)]
mod tests {
    use crate::a::x;
}
#[cfg(test)]
use crate::{a, b};
RS
  printf 'use crate::a::x;\n' >"$tmp/acyclic/c/more.rs"
  printf '#![cfg(test)]\nuse crate::a::x;\n' >"$tmp/acyclic/c/only_tests.rs"
  printf 'mod only_tests;\n' >>"$tmp/acyclic/c.rs"
  seq 700 | sed 's/^/\/\/ /' >"$tmp/acyclic/c/tests.rs"
  seq 700 | sed 's/^/\/\/ /' >"$tmp/acyclic/a/tests/long.rs"
  seq 600 | sed 's/^/\/\/ /' >"$tmp/acyclic/b/inner_600.rs"

  # 3. no cycle, but a 601-line file and a partition module naming the HTTP ingress.
  mkdir -p "$tmp/long/partition"
  printf 'use crate::http_ingress::Handle;\n' >"$tmp/long/partition/mod.rs"
  printf 'pub struct Handle;\n' >"$tmp/long/http_ingress.rs"
  seq 601 | sed 's/^/\/\/ /' >"$tmp/long/big.rs"

  expect() { # NAME WANT_RC LINE...: run the checks on $tmp/NAME, want that status and those lines
    local name="$1" want="$2" line before=$failures
    shift 2
    rc=0
    out="$("$SCRIPT" "$tmp/$name" 2>&1)" || rc=$?
    if ((rc != want)); then
      echo "self-test: $name: exit $rc, want $want" >&2
      failures=$((failures + 1))
    fi
    for line in "$@"; do
      if ! grep -qxF -- "$line" <<<"$out"; then
        echo "self-test: $name: no line '$line'" >&2
        failures=$((failures + 1))
      fi
    done
    if grep -q "^module cycle: " <<<"$out" && [[ "$name" != cyclic ]]; then
      echo "self-test: $name: a cycle reported where there is none" >&2
      failures=$((failures + 1))
    fi
    if ((failures > before)); then
      echo "self-test: $name: the checks printed:" >&2
      sed 's/^/    /' <<<"$out" >&2
    fi
  }
  expect cyclic 1 \
    "module cycle: b -> c -> b" \
    "module cycle: a -> b -> c -> a" \
    "  c -> a: $tmp/cyclic/c.rs:2" \
    "  b -> c: $tmp/cyclic/b/inner.rs:2"
  expect acyclic 0 \
    "ok   a. no module cycle among the 3 top-level modules of $tmp/acyclic (2 dependency edges)" \
    "skip b. $tmp/acyclic/partition does not exist yet (nothing to grep for http_ingress)" \
    "ok   c. no .rs file under $tmp/acyclic over $MAX_LINES lines (tests.rs and tests/ excepted)"
  expect long 1 \
    "ok   a. no module cycle among the 3 top-level modules of $tmp/long (1 dependency edges)" \
    "  $tmp/long/partition/mod.rs:1:use crate::http_ingress::Handle;" \
    "  $tmp/long/big.rs: 601 lines"
  if ((failures > 0)); then
    echo "check-layout.sh --self-test: FAILED ($failures problem(s))"
    return 1
  fi
  echo "ok   self-test: cycles found (brace groups; lib.rs, main.rs, bin/ ignored); an acyclic" \
    "tree passes (comments, strings, super::, cfg(test) code ignored); a long file and a" \
    "partition -> http_ingress mention found"
}

# ---- main -------------------------------------------------------------------------------------
SELF_TEST=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --self-test) SELF_TEST=1 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [[ -z "$DIR" ]] || usage; DIR="$arg" ;;
  esac
done

if ((SELF_TEST)); then
  self_test
  exit
fi
if [[ -z "$DIR" ]]; then
  cd "$REPO_ROOT"
  DIR=engine/src
fi
check "${DIR%/}"
