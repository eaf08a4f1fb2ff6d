"""Binds are opened before bwrap starts, component by component, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from noether_nix.errors import NoetherError
from noether_nix.sandbox.bwrap import build_argv, open_bind_fds, open_no_follow
from noether_nix.sandbox.policy import Bind, IsolationPolicy, Limits
from noether_nix.sandbox.profile import load_profile


def test_open_no_follow_refuses_a_symlink_anywhere_on_the_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = open_no_follow(str(tmp_path / "real"))
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "real"))
    finally:
        os.close(fd)
    for path in (tmp_path / "link", tmp_path / "link" / "x"):
        with pytest.raises(OSError):
            os.close(open_no_follow(str(path)))


def test_every_bind_is_passed_to_bwrap_as_an_open_fd(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    policy = IsolationPolicy(ro_binds=[Bind("/nix/store", "/nix/store")], network=False, env_allowlist=[],
                             rw_binds=[Bind(str(tmp_path / "out"), str(tmp_path / "out"))])
    fds = open_bind_fds(policy)
    try:
        assert list(fds) == [("ro", 0), ("rw", 0)]  # the store too: nothing is bound by name
        argv = build_argv("bwrap", ["true"], policy=policy, limits=Limits(), profile=load_profile("default"),
                          seccomp_fd=None, bind_fds=fds)
        i = argv.index("--bind-fd")
        assert argv[i + 1:i + 3] == [str(fds[("rw", 0)]), str(tmp_path / "out")]
        i = argv.index("--ro-bind-fd")
        assert argv[i + 1:i + 3] == [str(fds[("ro", 0)]), "/nix/store"]
        assert "--ro-bind" not in argv and "--bind" not in argv
    finally:
        for fd in fds.values():
            os.close(fd)
    swapped = IsolationPolicy(ro_binds=[], network=False, env_allowlist=[],
                              rw_binds=[Bind(str(tmp_path / "link"), "/out")])
    with pytest.raises(NoetherError) as refused:
        open_bind_fds(swapped)
    assert refused.value.code == "invalid_policy_path"


async def test_one_path_bound_read_only_and_writable_works(shared_tmp: Path) -> None:
    # bwrap closes a bind fd once used: each bind gets its own.
    import trio

    from noether_nix.model.effects import EffectSet, FsRead, FsWrite
    from noether_nix.nix.runtime import ensure_runtime
    from noether_nix.sandbox.policy import policy_from_effects
    from noether_nix.sandbox.supervisor import Isolation, run_sandboxed

    python = await trio.to_thread.run_sync(ensure_runtime, "python")
    d = str(shared_tmp)
    policy = policy_from_effects(EffectSet.of([FsRead(path=d), FsWrite(path=d)]), profile=load_profile("default"))
    code = f"import json\nopen({d!r} + '/f', 'w').write('x')\nprint(json.dumps(open({d!r} + '/f').read()))"
    res = await run_sandboxed([python.interpreter, "-I", "-S", "-c", code], policy=policy, limits=Limits(),
                              stdin=b"", isolation=Isolation("bwrap"), profile=load_profile("default"))
    assert res.ok, res
    assert res.output == "x"
