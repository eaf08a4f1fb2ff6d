"""The human view: what a terminal shows, from the same data and events as the JSON envelope.

``noether`` prints this view when its standard output is a terminal (or
with ``--human``) and the ACLI envelope otherwise (or with ``--json``). It
renders only what both backends give — a command's data, a run's
``engine.events`` Structs, a ``NoetherError`` — so it reads the same
embedded and through the daemon. rich draws it, and is imported only here,
only when a view is made: a piped ``noether run`` never loads it.

A run shows one line per stage: while it runs, a spinner with its elapsed
time (a Nix build shows here); when it ends, a line with its time,
isolation, cache and build. Stages a map, filter or reduce runs on each
item become a progress bar. Then the output, and a one-line summary.
Colours follow rich's rules: none when ``NO_COLOR`` is set or the output
is not a terminal.

Much of what is shown comes from others (a stage's output and what it
printed, names and descriptions from a store or a registry, messages that
quote a graph): every such text is shown, never obeyed — its control
characters spelt out (``noether_nix.terminal.visible``: no escape sequence
reaches the terminal) and its brackets never read as rich markup.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager

from noether_nix.terminal import visible

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from noether_nix.errors import NoetherError

OK, FAILED, CACHED, RUNNING = "✓", "✗", "↺", "▶"


# ---------------------------------------------------------------- words and numbers


def duration(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{int(ms)} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def when(ts: Any) -> str:
    """A stored time (Unix seconds, or ISO 8601) as local time for reading."""
    try:
        from datetime import datetime

        moment = datetime.fromtimestamp(float(ts)) if isinstance(ts, (int, float)) else \
            datetime.fromisoformat(str(ts)).astimezone()
    except (TypeError, ValueError, OverflowError):
        return str(ts or "")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def value_text(value: Any, width: int = 100) -> str:
    """A value for reading: text as it is, anything else as JSON (on one line when it fits)."""
    if isinstance(value, str):
        return value
    one = json.dumps(value, ensure_ascii=False)
    return one if len(one) <= width else json.dumps(value, indent=2, ensure_ascii=False)


def stage_line(name: str, path: str, status: str, *, wall_ms: int | None = None, isolation: str | None = None,
               build_ms: int | None = None, attempt: int = 1, cached: bool = False,
               items: int | None = None) -> tuple[str, str]:
    """One finished stage: its mark and its line (``✓ greet  root.stages[0]  312 ms · bwrap · built in 123 ms``)."""
    ok = status in ("ok", "Ok", "cached")
    mark = CACHED if cached or status == "cached" else OK if ok else FAILED
    parts = ["cached" if mark == CACHED else duration(wall_ms or 0)]
    if isolation and mark != CACHED:
        parts.append(isolation)
    if build_ms:
        parts.append(f"built in {duration(build_ms)}")
    if items is not None:
        parts.append(plural(items, "item"))
    if attempt > 1:
        parts.append(f"attempt {attempt}")
    if not ok:
        parts.append(status.replace("_", " "))
    return mark, f"{name:<16} {path:<20} " + " · ".join(p for p in parts if p)


def _scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def outline(data: Any, indent: int = 0) -> list[str]:
    """Data as rich-markup lines: ``key  value`` for scalars, nested blocks indented, lists as items."""
    pad = "  " * indent
    if isinstance(data, dict):
        if not data:
            return [f"{pad}[dim](none)[/]"]
        width = max(len(str(k)) for k in data)
        out: list[str] = []
        for k, v in data.items():
            key = _esc(f"{k!s:<{width}}")
            if isinstance(v, (dict, list)) and v and not _flat_list(v):
                out.append(f"{pad}[bold]{_esc(k)}[/]")
                out.extend(outline(v, indent + 1))
            else:
                shown = ", ".join(_scalar(x) for x in v) if isinstance(v, list) else _scalar(v)
                out.append(f"{pad}[bold]{key}[/]  {_esc(shown) if shown else '[dim](none)[/]'}")
        return out
    if isinstance(data, list):
        out = []
        for item in data:
            if isinstance(item, (dict, list)):
                sub = outline(item, indent + 1)
                out.append(f"{pad}- " + sub[0].lstrip() if sub else f"{pad}-")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_esc(_scalar(item))}")
        return out or [f"{pad}[dim](none)[/]"]
    return [f"{pad}{_esc(_scalar(data))}"]


def _flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) and \
        sum(len(str(x)) for x in v) < 80


def render_event(ev: Any) -> str | None:
    """A run event as one plain line, for progress on a terminal stderr while stdout carries JSON."""
    kind = type(ev).__name__
    if kind == "StageStarted":
        return visible(f"  {RUNNING} {ev.name or ev.stage_id[:8]}  {ev.node_path}")
    if kind == "StageFinished":
        mark, line = stage_line(ev.name or ev.stage_id[:8], ev.node_path, ev.status, wall_ms=ev.wall_ms,
                                isolation=ev.isolation, build_ms=ev.build_ms, attempt=ev.attempt, cached=ev.cached)
        return visible(f"  {mark} {line}")
    if kind == "RunWarning":
        return visible(f"  ! {ev.message}")
    return None


# ---------------------------------------------------------------- the view


class View:
    """Where the human view is drawn: ``out`` (stdout) for results, ``err`` (stderr) for errors."""

    def __init__(self, out: Console, err: Console) -> None:
        self.out = out
        self.err = err

    @property
    def live(self) -> bool:
        """Whether stdout is a terminal a live display can redraw."""
        return bool(self.out.is_terminal)

    # ------------------------------------------------------------ results

    def show(self, command: str, data: Any) -> None:
        render = _RENDERERS.get(command)
        if render is not None and isinstance(data, dict):
            render(self, data)
        else:
            self.generic(data)

    def generic(self, data: Any) -> None:
        """Any other command's data as an indented outline: keys in bold, lists as items."""
        for line in outline(data):
            self.out.print(line, highlight=False)

    def line(self, text: str, style: str = "") -> None:
        self.out.print(_esc(text), style=style or None)

    # ------------------------------------------------------------ errors

    def show_error(self, err: NoetherError, command: str = "", *, console: Console | None = None) -> None:
        """An error that teaches: what, where, what the stage printed (and its traceback), what to do."""
        c = console or self.err
        message = err.message
        if command == "run" and message.startswith("execution failed: "):
            message = message[len("execution failed: "):]
        c.print(f"[bold red]error[/][red]\\[{_esc(err.code)}][/]: {_esc(message)}")
        if err.path:
            c.print(f"  [dim]at[/] {_esc(err.path)}")
        details = err.details or {}
        printed = details.get("printed")
        if printed:
            c.print("  [dim]the stage printed:[/]")
            c.print(_indent(printed, 4), style="yellow", markup=False, highlight=False)
        if details.get("traceback"):
            c.print(_indent(details["traceback"], 2), markup=False, highlight=False)
        elif not printed and "\n" in (tail := str(details.get("stderr_tail", "")).strip()):
            c.print("  [dim]its error output ended with:[/]")
            c.print(_indent(tail, 4), markup=False, highlight=False)
        for sub in details.get("errors", [])[1:]:
            if isinstance(sub, dict):
                c.print(f"  [dim]and at {_esc(sub.get('node_path', ''))}:[/] {_esc(sub.get('message', ''))}")
        if err.hint:
            c.print(f"  [cyan]hint:[/] {_esc(err.hint)}")

    # ------------------------------------------------------------ long work

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner while a blocking call runs (a build at `stage add`, examples at `stage test`)."""
        if not self.live:
            yield
            return
        with self.out.status(_esc(text), spinner="dots"):
            yield

    @contextmanager
    def run_progress(self) -> Iterator[RunProgress]:
        progress = None
        if self.live:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), *_bar_columns(),
                                TimeElapsedColumn(), console=self.out, transient=True)
        watcher = RunProgress(self, progress)
        if progress is None:
            yield watcher
            return
        with progress:
            yield watcher

    @contextmanager
    def warmup_progress(self) -> Iterator[Any]:
        """A progress bar fed by warmup's reports (``{"total", "built", "cached", "failed"}``)."""
        if not self.live:
            yield lambda p: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("building programs"), BarColumn(), MofNCompleteColumn(),
                      console=self.out, transient=True) as progress:
            task = progress.add_task("warmup", total=None)

            def report(p: dict[str, Any]) -> None:
                done = p.get("done", p["built"] + p["cached"] + len(p["failed"]))
                progress.update(task, total=p["total"], completed=done)

            yield report


def _bar_columns() -> list[Any]:
    from rich.progress import ProgressColumn
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    class BarColumn(ProgressColumn):
        """A bar for work with a size (a map's items); nothing for a stage that is just running."""

        def render(self, task: Any) -> Any:
            if task.total is None:
                return Text("")
            return ProgressBar(total=task.total, completed=task.completed, width=30)

    class CountColumn(ProgressColumn):
        def render(self, task: Any) -> Any:
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)} items", style="dim")

    return [BarColumn(), CountColumn()]


class RunProgress:
    """Turns a run's events into the view: running stages live, finished ones as lines."""

    def __init__(self, view: View, progress: Progress | None) -> None:
        self.view = view
        self.progress = progress
        self.running: dict[tuple[str, int], TaskID] = {}
        #: Stages that run others on each item (map, filter, reduce): path → (task, done, total).
        self.bars: dict[str, list[Any]] = {}
        self.lines = 0
        self.started = time.monotonic()

    def _print(self, text: str, style: str = "") -> None:
        console = self.progress.console if self.progress is not None else self.view.out
        console.print(_esc(text), style=style or None, highlight=False)

    def _bar_of(self, path: str) -> list[Any] | None:
        """The progress bar a stage at ``path`` counts toward (an item of a map, …), if any."""
        at = path.rfind(".items[")
        while at > 0:
            bar = self.bars.get(path[:at])
            if bar is not None:
                return bar
            at = path.rfind(".items[", 0, at)
        return None

    def __call__(self, ev: Any) -> None:
        kind = type(ev).__name__
        if kind == "StageStarted":
            if self._bar_of(ev.node_path) is not None:
                return
            if self.progress is not None:
                name = ev.name or ev.stage_id[:8]
                task = self.progress.add_task(f"{_esc(name):<16} [dim]{_esc(ev.node_path)}[/]", total=None)
                self.running[(ev.node_path, ev.attempt)] = task
        elif kind == "StageFinished":
            bar = self._bar_of(ev.node_path)
            if bar is not None:
                bar[1] += 1
                if self.progress is not None and bar[0] is not None:
                    self.progress.update(bar[0], completed=min(bar[1], bar[2] or bar[1]))
                if ev.status in ("ok", "cached"):
                    return
            key = (ev.node_path, ev.attempt)
            if key in self.running and self.progress is not None:
                self.progress.remove_task(self.running.pop(key))
            own_bar = self.bars.get(ev.node_path)
            mark, line = stage_line(ev.name or ev.stage_id[:8], ev.node_path, ev.status, wall_ms=ev.wall_ms,
                                    isolation=ev.isolation, build_ms=ev.build_ms, attempt=ev.attempt,
                                    cached=ev.cached, items=own_bar[2] if own_bar is not None else None)
            self._print(f"{mark} {line}", "red" if mark == FAILED else "")
            self.lines += 1
        elif kind == "StageProgress":
            bar = self.bars.get(ev.node_path)
            if bar is None:
                task = None
                if self.progress is not None:
                    running = self.running.get((ev.node_path, 1))
                    label = f"{'items':<16} [dim]{_esc(ev.node_path)}[/]"
                    task = self.progress.add_task(label, total=ev.total) if running is None else running
                    self.progress.update(task, total=ev.total)
                bar = self.bars[ev.node_path] = [task, 0, ev.total]
            bar[1] = max(bar[1], ev.done)
            if self.progress is not None and bar[0] is not None:
                self.progress.update(bar[0], completed=bar[1], total=ev.total)
        elif kind == "StageOutput":
            console = self.progress.console if self.progress is not None else self.view.out
            console.out(visible(ev.text), end="", highlight=False)
        elif kind == "RunWarning":
            self._print(f"! {ev.message}", "yellow")


# ---------------------------------------------------------------- per command


def _run(view: View, data: dict[str, Any], *, live_lines: bool = True, header: str | None = None) -> None:
    """A run's result: (its stage lines, when they were not shown live), output, one-line summary."""
    trace = data.get("trace") or {}
    stages = trace.get("stages") or []
    if header:
        view.out.print(header)
    if not live_lines:
        for s in stages:
            status = s.get("status")
            failed = isinstance(status, dict)
            mark, line = stage_line(s.get("name") or s.get("stage_id", "")[:8], s.get("node_path", ""),
                                    "failed" if failed else "ok", wall_ms=s.get("duration_ms"),
                                    isolation=s.get("isolation"), build_ms=s.get("build_ms"),
                                    attempt=s.get("attempt", 1), cached=bool(s.get("cached")))
            view.out.print(_esc(f"{mark} {line}"), style="red" if failed else None, highlight=False)
            if s.get("log") and not failed:
                lines = s["log"].rstrip("\n").count("\n") + 1
                view.out.print(f"  [dim]printed {plural(lines, 'line')}:[/]")
                view.out.print(_indent(s["log"].rstrip("\n"), 4), markup=False, highlight=False, style="dim")
    status = data.get("status") or trace.get("run_status")
    if status == "ok" and "output" in data:
        view.out.print(visible(value_text(data["output"], view.out.width)), markup=False, highlight=False,
                       style="bold")
    printed = [s for s in stages if s.get("log") and not isinstance(s.get("status"), dict)]
    cache = data.get("cache") or {}
    run_id = str(data.get("run_id") or trace.get("run_id") or "")
    parts = [f"{len(stages)} {'stage' if len(stages) == 1 else 'stages'}"]
    if trace.get("duration_ms") is not None:
        parts.insert(0, duration(trace["duration_ms"]))
    if cache.get("hits"):
        parts.append(f"{plural(cache['hits'], 'cache hit')}")
    if data.get("spent_cents"):
        parts.append(f"spent {data['spent_cents']}¢")
    if live_lines and printed:
        parts.append(f"{plural(len(printed), 'stage')} printed output (noether trace {run_id[:8]})")
    parts.append(f"run {run_id[:8]}")
    mark, style = (OK, "green") if status == "ok" else (FAILED, "red")
    word = _esc(status or "unknown")
    view.out.print(f"[{style}]{mark} {word}[/] [dim]· " + " · ".join(_esc(p) for p in parts) + "[/]")


def _check(view: View, data: dict[str, Any]) -> None:
    tc = data.get("type_check") or {}
    view.out.print(f"[green]{OK} the graph checks:[/] {_esc(tc.get('input', '?'))} → {_esc(tc.get('output', '?'))}")
    stages = data.get("stages") or []
    view.line(f"  effects: {', '.join(data.get('effects') or ['pure'])} · {plural(len(stages), 'stage')} · "
              f"expected cost {data.get('expected_cost_cents', 0)}¢")
    for s in stages:
        view.line(f"  · {s}")
    for w in data.get("warnings") or []:
        view.line(f"! {w.get('message', w) if isinstance(w, dict) else w}", "yellow")
    view.out.print(f"[dim]composition {_esc(str(data.get('composition_id', ''))[:16])}[/]")


def _trace(view: View, data: dict[str, Any]) -> None:
    trace = data.get("trace") or {}
    events = data.get("events") or []
    last = events[-1] if events and isinstance(events[-1], dict) and events[-1].get("event") == "run_finished" else {}
    header = (f"[bold]run {_esc(str(data.get('run_id', ''))[:8])}[/] [dim]· composition "
              f"{_esc(str(data.get('composition_id', ''))[:8])} · started {_esc(when(data.get('started_at')))}[/]")
    shown = {**last, "trace": trace, "run_id": data.get("run_id"), "status": data.get("status"),
             "spent_cents": data.get("spent_cents")}
    _run(view, shown, live_lines=False, header=header)
    error = trace.get("error") or last.get("error")
    if error:  # the run's failure is what this command shows, on stdout
        from noether_nix.errors import NoetherError

        view.show_error(NoetherError.from_dict(error), "run", console=view.out)


def _runs(view: View, data: dict[str, Any]) -> None:
    from rich.table import Table

    runs = data.get("runs") or []
    if not runs:
        view.line("no runs yet")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("run", "status", "started", "took", "composition"):
        table.add_column(col)
    for r in runs:
        took = (r["finished_at"] - r["started_at"]) * 1000 if r.get("finished_at") and r.get("started_at") else None
        style = "green" if r.get("status") == "ok" else "red" if r.get("status") in ("failed", "interrupted") else ""
        status = _esc(r["status"])
        table.add_row(_esc(str(r["run_id"])[:8]), f"[{style}]{status}[/]" if style else status,
                      _esc(when(r.get("started_at"))), duration(took), _esc(str(r["composition_id"])[:8]))
    view.out.print(table)


def _stage_list(view: View, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("id", "lifecycle", "name", "signature", "effects"):
        table.add_column(col, overflow="fold")
    for s in data.get("stages") or []:
        table.add_row(*(_esc(cell) for cell in (s["id"][:8], s["lifecycle"], s.get("name") or s.get("description") or "",
                                                 s["signature"], ", ".join(s.get("effects") or []))))
    view.out.print(table)
    view.out.print(f"[dim]{plural(data.get('count', 0), 'stage')}[/]")


def _stage_get(view: View, data: dict[str, Any]) -> None:
    from noether_nix.model.stage import lifecycle_name, stage_from_json
    from noether_nix.model.types import display

    try:
        stage = stage_from_json(data)
    except Exception:  # a registry's stage this version cannot read: show the data as it is
        view.generic(data)
        return
    rows = [("name", stage.name or ""), ("id", stage.id), ("signature", f"{display(stage.input)} → "
                                                                        f"{display(stage.output)}"),
            ("effects", ", ".join(stage.effects.display())), ("lifecycle", lifecycle_name(stage.lifecycle)),
            ("description", stage.description)]
    if stage.implementation_language:
        rows.append(("language", stage.implementation_language))
    if stage.tags:
        rows.append(("tags", ", ".join(stage.tags)))
    rows.append(("examples", str(len(stage.examples))))
    rows.append(("signed", "yes" if stage.ed25519_signature else "no"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        view.out.print(f"[bold]{k:<{width}}[/]  {_esc(v)}")


def _stage_add(view: View, data: dict[str, Any]) -> None:
    sid = str(data.get("id", ""))
    if data.get("note") == "already exists":
        view.line(f"{OK} stage {sid[:8]} is already in the store ({data.get('lifecycle')})")
        return
    view.out.print(f"[green]{OK} added[/] stage {_esc(sid[:8])} [dim]({_esc(sid)})[/] as {_esc(data.get('lifecycle'))}")
    program = data.get("program") or {}
    if program.get("built"):
        view.line(f"  program built in {duration(program.get('build_ms'))}: {program.get('store_path')}", "dim")
    for old in data.get("supersedes") or []:
        view.line(f"  supersedes {old[:8]} (now Deprecated)", "dim")
    if data.get("lifecycle") == "draft":
        view.line(f"  a Draft: `noether stage activate {sid[:8]}` makes it Active", "dim")
    for w in data.get("warnings") or []:
        view.line(f"! {w}", "yellow")


def _tested(view: View, data: dict[str, Any]) -> None:
    marks = {"passed": (OK, "green"), "failed": (FAILED, "red"), "skipped": ("-", "dim")}
    for s in data.get("stages") or []:
        details = s.get("details")
        if isinstance(details, dict):  # verify: its problems, or nothing to say
            details = "; ".join(details.get("problems", []))
        mark, style = marks.get(s.get("status", ""), ("?", ""))
        name = s.get("name") or s.get("description", "")
        view.out.print(f"[{style}]{mark}[/] {_esc(str(s.get('id', ''))[:8])}  {_esc(name)}"
                       + (f"  [dim]{_esc(details)}[/]" if details else ""))
    counts = ", ".join(f"{data[k]} {k}" for k in ("passed", "failed", "skipped") if k in data)
    view.out.print(f"[dim]({plural(data.get('total', 0), 'stage')}: {counts})[/]")


def _warmup(view: View, data: dict[str, Any]) -> None:
    failed = data.get("failed") or []
    view.line(f"{OK if not failed else FAILED} {plural(data.get('total', 0), 'program')}: {data.get('built', 0)} built, "
              f"{data.get('cached', 0)} already built, {len(failed)} failed "
              f"({duration(data.get('build_ms', 0))} building)")
    for f in failed:
        view.line(f"  {FAILED} {str(f.get('stage_id', ''))[:8]}: {(f.get('error') or {}).get('message', '')}", "red")


def _version(view: View, data: dict[str, Any]) -> None:
    view.line(f"noether {data.get('version', '')}")


def _store_import(view: View, data: dict[str, Any]) -> None:
    counts = data.get("counts") or {}
    view.line(f"{OK} imported {plural(counts.get('imported', 0), 'stage')}, "
              f"{counts.get('skipped', 0)} already in the store")


def _run_result(view: View, data: dict[str, Any]) -> None:
    _run(view, data, live_lines=True)


_RENDERERS: dict[str, Any] = {
    "run": _run_result,
    "check": _check,
    "trace": _trace,
    "runs": _runs,
    "stage list": _stage_list,
    "stage get": _stage_get,
    "stage add": _stage_add,
    "stage test": _tested,
    "stage verify": _tested,
    "warmup": _warmup,
    "version": _version,
    "store import": _store_import,
}


# ---------------------------------------------------------------- helpers


def _esc(value: Any) -> str:
    """Text shown as it is: no rich markup inside it, no control character (``visible``)."""
    from rich.markup import escape

    return escape(visible(str(value)))


def _indent(text: str, n: int) -> str:
    """Text from elsewhere (what a stage printed, a traceback) indented, its control characters spelt out."""
    pad = " " * n
    return "\n".join(pad + line for line in visible(str(text)).rstrip("\n").split("\n"))


def make_view() -> View:
    """The view for this process: stdout and stderr as rich consoles (colour off with NO_COLOR,
    or when not a terminal)."""
    from rich.console import Console

    def width(stream: Any) -> int | None:
        return None if stream.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 100

    return View(Console(highlight=False, width=width(sys.stdout)),
                Console(stderr=True, highlight=False, width=width(sys.stderr)))
