"""The layering holds: no import cycle, and noether_nix modules are imported
lazily (inside a function) only where that keeps something light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "noether_nix"

#: Files that may import noether_nix modules inside functions, and why.
LAZY_ALLOWED = {
    # The CLI and the client path: `noether` talking to a daemon must not load
    # the engine, the sandbox or Nix (start-up time; bench/cli_startup.py).
    "cli/": "a command loads what it needs when it runs",
    "backend/__init__.py": "the daemon backend must not load the local one (the engine)",
    "backend/daemon.py": "a run's events become msgspec Structs only for a reader that wants them",
    "settings_view.py": "the settings tree (msgspec) is built only when the plain reading cannot vouch",
    "service/context.py": "handlers that only read the store never build an engine",
    "service/graph.py": "handlers load the engine, graph checks and Nix only when they run",
    "service/stages.py": "the CLI imports LIST_LIFECYCLES from here; Nix loads only to build",
    # Optional parts: a registry needs psycopg only with PostgreSQL, embeddings only with a provider,
    # the engine only for /compositions/run; a daemon loads the registry client only when configured.
    "registry/": "psycopg, embeddings and the engine are optional",
    "server/daemon.py": "the registry client is loaded only when a registry is configured",
    "engine/engine.py": "the remote executor needs the remote extra (grpcio, protobuf): loaded only when configured",
    # A run without an event loop (engine.noloop: a one-shot `noether run` of a chain of stages)
    # loads neither trio nor the spawner thread, the warm pool, the supervisor, the process host
    # nor higher-order stages: each is loaded by the code that starts or serves one.
    "engine/dispatch.py": "higher-order stages and the process host load when such a stage runs",
    "engine/executor.py": "the warm pool and the trio supervisor load for a run on trio; run_blocking for one without",
    "nix/build.py": "the spawner (proc) loads when a build starts",
    "nix/programs.py": "the spawner (proc) loads when a build starts",
    "nix/requirements.py": "the spawner (proc) loads when wheels are fetched",
}


def lazy_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in PACKAGE.rglob("*.py"):
        rel = str(f.relative_to(PACKAGE))
        if "sandboxed/" in rel:  # programs run inside the sandbox, not modules of the package
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("noether_nix"):
                        found.setdefault(rel, set()).add(str(sub.module))
    return found


def test_lazy_imports_only_where_they_keep_something_light() -> None:
    stray = {f: mods for f, mods in lazy_imports().items()
             if not any(f == allowed or (allowed.endswith("/") and f.startswith(allowed)) for allowed in LAZY_ALLOWED)}
    assert not stray, stray


def test_every_module_imports_on_its_own() -> None:
    """No import cycle: each module imports first, in a fresh interpreter (a cycle fails on one of them)."""
    modules = sorted(str(f.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".")
                     for f in PACKAGE.rglob("*.py") if "sandboxed" not in f.parts and f.name != "__main__.py")
    code = ("import importlib, sys\nfailed = []\nfor m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.startswith('noether_nix')]:\n        del sys.modules[k]\n"
            "    try:\n        importlib.import_module(m)\n    except Exception as e:\n"
            "        failed.append(f'{m}: {type(e).__name__}: {e}')\nprint('\\n'.join(failed))\n")
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def top_level_imports() -> dict[str, set[str]]:
    """module → the noether_nix modules it imports at module level (TYPE_CHECKING blocks aside)."""
    graph: dict[str, set[str]] = {}
    names = {str(f.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".").removesuffix(".__init__")
             for f in PACKAGE.rglob("*.py")}
    for f in PACKAGE.rglob("*.py"):
        if "sandboxed" in f.parts:
            continue
        mod = str(f.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("noether_nix"):
                base = str(node.module)
                for a in node.names:  # `from noether_nix.x import y` may import the module x.y
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in names else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("noether_nix"))
        graph[mod] = {d for d in deps if d != mod}
    return graph


def test_no_import_cycle() -> None:
    graph = top_level_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_readme_endpoint_table_is_the_endpoint_table() -> None:
    from noether_nix.service.endpoints import markdown_table

    assert markdown_table() in (PACKAGE.parent / "README.md").read_text()


def test_the_docs_say_where_each_stdlib_stage_runs_as_the_registry_does() -> None:
    """docs/compatibility.md's table agrees with stdlib.registry.STDLIB, which pre-flight and dispatch read."""
    import re

    from noether_nix.stdlib.registry import STDLIB

    text = (PACKAGE.parent / "docs" / "compatibility.md").read_text()
    table = text[text.index("| stages | runs | can reach |"):].split("\n\n", 1)[0].splitlines()[2:]
    listed: dict[str, str] = {}
    for row in table:
        stages, runs = row.split("|")[1:3]
        if "Pure stages" in stages:
            names = [n for n, e in STDLIB.items() if e.category == "pure"]
        else:
            names = [n for n in re.findall(r"`([a-z0-9_*]+)`", stages) if n in STDLIB or n.endswith("*")]
            names = [m for n in names for m in ([k for k in STDLIB if k.startswith(n[:-1])] if n.endswith("*")
                                                else [n])]
        for n in names:
            assert n not in listed, f"{n} is in two rows"
            listed[n] = runs
    assert set(listed) == set(STDLIB)
    for name, runs in listed.items():
        in_sandbox = runs.strip().startswith(("a sandbox", "the run's **process host**"))
        assert in_sandbox == STDLIB[name].sandboxed, (name, runs)


def test_the_client_route_table_is_the_endpoint_table() -> None:
    """``service.urls.ROUTES`` (what a lean client reads) is the projection of ``service.endpoints``."""
    from noether_nix.service import endpoints as ep
    from noether_nix.service.urls import ROUTES

    assert {e.name: (e.method, e.path, e.slow) for e in ep.ENDPOINTS} == ROUTES
    # The daemon backend's requests are the ones the Structs make.
    from noether_nix.service.urls import target

    for name, params in [("run", ep.Run(graph={"root": 1}, input="x", options={"cache": False})),
                         ("runs_list", ep.RunsList(limit=3)), ("run_get", ep.Ref("a/b c")),
                         ("stage_list", ep.StageList(lifecycle="active", tag=["x", "y z"], full_ids=False)),
                         ("stage_lifecycle", ep.Lifecycle(ref="abc", lifecycle="Active")),
                         ("verify_all", ep.NoParams())]:
        method, path, _ = ROUTES[name]
        values = {f: getattr(params, f) for f in params.__struct_fields__}
        assert target(method, path, values) == ep.target(ep.BY_NAME[name], params), name


def test_the_client_settings_keys_are_the_settings_tree() -> None:
    """``settings_view.KEYS`` (what a lean client checks a settings file against) is ``Settings``'s tree."""
    from typing import Annotated, get_args, get_origin

    import msgspec

    from noether_nix.settings import Settings
    from noether_nix.settings_view import KEYS

    tree: dict[str, frozenset[str]] = {}

    def walk(struct: type[msgspec.Struct], section: str) -> None:
        tree[section] = frozenset(f.encode_name for f in msgspec.structs.fields(struct))
        for f in msgspec.structs.fields(struct):
            tp = f.type
            while get_origin(tp) is Annotated:
                tp = get_args(tp)[0]
            if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
                walk(tp, f"{section}.{f.encode_name}" if section else f.encode_name)

    walk(Settings, "")
    assert tree == KEYS
