"""Hostile stages in the real bwrap sandbox: each must fail to get out, and
the host must see nothing. After every probe no process survives (checked
in the `probe` fixture)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
import trio

from noether_nix.sandbox.policy import Limits
from noether_nix.sandbox.supervisor import Status
from tests.sandbox.conftest import Probe
from tests.sandbox_access import share_with_sandbox

J = "import json, os, sys\n"


async def test_runs_and_speaks_json(probe: Probe) -> None:
    r = await probe(J + "x = json.load(sys.stdin)\nprint(json.dumps({'echo': x}))", stdin={"a": [1, 2]})
    assert r.status is Status.OK and r.output == {"echo": {"a": [1, 2]}}
    assert r.isolation == "bwrap"


async def test_uid_and_gid_are_nobody(probe: Probe) -> None:
    r = await probe(J + "print(json.dumps([os.getuid(), os.getgid(), os.geteuid()]))")
    assert r.output == [65534, 65534, 65534]


async def test_no_setuid_setgid_or_chroot(probe: Probe) -> None:
    code = J + """
out = {}
for name, fn in (("setuid", lambda: os.setuid(0)), ("setgid", lambda: os.setgid(0)), ("chroot", lambda: os.chroot("/"))):
    try:
        fn(); out[name] = "allowed"
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))"""
    r = await probe(code)
    assert "allowed" not in r.output.values()


async def test_no_setuid_or_setgid_files_can_be_made(probe: Probe) -> None:
    # Whatever host uid the sandbox maps to, a file it leaves behind must not
    # carry that uid's rights to whoever runs it.
    code = J + """
import stat
out = {}
open("/work/f", "w").close()
for name, fn in (
    ("chmod_suid", lambda: os.chmod("/work/f", 0o4755)),
    ("chmod_sgid", lambda: os.chmod("/work/f", 0o2755)),
    ("fchmod_suid", lambda: os.fchmod(os.open("/work/f", os.O_RDONLY), 0o4755)),
    ("create_suid", lambda: os.close(os.open("/work/g", os.O_CREAT | os.O_WRONLY, 0o4755))),
    ("mknod_suid", lambda: os.mknod("/work/h", 0o4755 | stat.S_IFREG)),
):
    try:
        fn(); out[name] = "allowed"
    except OSError as e:
        out[name] = e.errno
os.chmod("/work/f", 0o755)  # an ordinary mode still works
out["plain"] = oct(os.stat("/work/f").st_mode & 0o7777)
print(json.dumps(out))"""
    r = await probe(code)
    assert r.output == {"chmod_suid": 1, "chmod_sgid": 1, "fchmod_suid": 1, "create_suid": 1, "mknod_suid": 1,
                        "plain": "0o755"}, r.output


async def test_home_and_user_are_sandbox_values(probe: Probe) -> None:
    r = await probe(J + "print(json.dumps([os.environ.get('HOME'), os.environ.get('USER'), os.getcwd()]))")
    assert r.output == ["/work", "nobody", "/work"]


async def test_host_secrets_in_environment_do_not_leak(probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("NOETHER_TEST_SECRET", "s3cret")
    r = await probe(J + "print(json.dumps(dict(os.environ)))")
    assert "hunter2" not in str(r.output) and "s3cret" not in str(r.output)
    assert set(r.output) <= {"HOME", "USER", "PATH", "PWD", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "NOETHER_LOG_LEVEL",
                             "SSL_CERT_FILE", "SSL_CERT_DIR"}


async def test_work_is_private_empty_and_writable(probe: Probe) -> None:
    code = J + "before = os.listdir('/work')\nopen('/work/f', 'w').write('hi')\nprint(json.dumps([before, open('/work/f').read()]))"
    r = await probe(code)
    assert r.output == [[], "hi"]


@pytest.mark.parametrize(
    "path",
    ["/etc/shadow", "/etc/passwd", "/root/.ssh/id_rsa", "/root/.ssh/id_ed25519", "/root/.aws/credentials",
     "/root/.config/gcloud/credentials.db", "/var/lib/noether/noether.db", "/home"],
)
async def test_host_files_are_invisible(probe: Probe, path: str) -> None:
    r = await probe(J + f"print(json.dumps(os.path.exists({path!r})))")
    assert r.output is False


async def test_host_tmp_is_not_shared(probe: Probe) -> None:
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="host-secret-") as f:
        r = await probe(J + "print(json.dumps(os.listdir('/tmp')))")
        assert os.path.basename(f.name) not in r.output
        assert r.output == []


async def test_host_processes_are_invisible_in_proc(probe: Probe) -> None:
    r = await probe(J + "print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))")
    assert os.getpid() not in r.output
    assert len(r.output) <= 3  # bwrap's init and the probe itself


async def test_no_network_without_the_effect(probe: Probe) -> None:
    code = J + """
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); out = "connected"
except OSError as e:
    out = type(e).__name__
try:
    socket.gethostbyname("localhost"); res = "resolved"
except OSError:
    res = "blocked"
print(json.dumps([out, res]))"""
    r = await probe(code)
    assert r.output[0] != "connected"


async def test_loopback_services_of_the_host_are_unreachable(probe: Probe) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        code = J + f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2); out = "connected"
except OSError as e:
    out = type(e).__name__
print(json.dumps(out))"""
        r = await probe(code)
        assert r.output != "connected"
    finally:
        srv.close()


async def test_host_abstract_unix_sockets_are_unreachable(probe: Probe) -> None:
    name = f"\0noether-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen(1)
    try:
        code = J + f"""
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({name!r}); out = "connected"
except OSError as e:
    out = type(e).__name__
print(json.dumps(out))"""
        r = await probe(code)
        assert r.output != "connected"
    finally:
        srv.close()


async def test_network_effect_grants_the_network(probe: Probe) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:  # every connection (a warm probe connects twice)
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                conn.sendall(b"hello")
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        code = J + f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
print(json.dumps(s.recv(5).decode()))"""
        r = await probe(code, effects=["Network"])
        assert r.output == "hello"
    finally:
        srv.close()


async def test_network_stages_trust_the_hosts_certificate_authorities(probe: Probe) -> None:
    # The runtime's OpenSSL looks for CAs under its build-time prefix, which a
    # sandbox does not have; the profile points it at the host's bundle,
    # bound read-only with the Network effect. Without it every HTTPS call fails.
    code = J + """
import ssl
print(json.dumps(ssl.create_default_context().cert_store_stats()["x509_ca"]))"""
    r = await probe(code, effects=["Network"])
    assert r.output > 10, r


async def test_writes_only_inside_declared_fswrite(probe: Probe, shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    allowed = tmp_path / "out"
    allowed.mkdir()
    share_with_sandbox(allowed, writable=True)
    code = J + f"""
res = {{}}
for p in ({str(allowed / 'ok.txt')!r}, {str(tmp_path / 'escape.txt')!r}, "/nix/store/evil", "/usr/evil"):
    try:
        open(p, "w").write("x"); res[p] = "written"
    except OSError as e:
        res[p] = e.errno
print(json.dumps(res))"""
    r = await probe(code, effects=[{"effect": "FsWrite", "path": str(allowed)}])
    assert (allowed / "ok.txt").read_text() == "x"
    # A write beside the bind lands in the sandbox's private /tmp, never on the host.
    assert not (tmp_path / "escape.txt").exists()
    assert r.output["/nix/store/evil"] != "written" and r.output["/usr/evil"] != "written"
    assert not Path("/nix/store/evil").exists() and not Path("/usr/evil").exists()


async def test_usr_lib_and_etc_of_the_host_do_not_exist(probe: Probe) -> None:
    r = await probe(J + "print(json.dumps([os.path.exists(p) for p in ('/usr', '/lib', '/bin', '/etc/passwd', '/root')]))")
    assert r.output == [False, False, False, False, False]


async def test_fsread_is_read_only(probe: Probe, shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    (tmp_path / "data.txt").write_text("payload")
    code = J + f"""
content = open({str(tmp_path / 'data.txt')!r}).read()
try:
    open({str(tmp_path / 'data.txt')!r}, "w").write("changed"); w = "written"
except OSError as e:
    w = e.errno
print(json.dumps([content, w]))"""
    r = await probe(code, effects=[{"effect": "FsRead", "path": str(tmp_path)}])
    assert r.output[0] == "payload" and r.output[1] != "written"
    assert (tmp_path / "data.txt").read_text() == "payload"


async def test_symlink_in_writable_bind_cannot_reach_host(probe: Probe, shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    out = tmp_path / "out"
    out.mkdir()
    share_with_sandbox(out, writable=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code = J + f"""
for name in ("link", "l2"):  # a warm probe runs twice: start from the same state
    if os.path.lexists(os.path.join({str(out)!r}, name)):
        os.unlink(os.path.join({str(out)!r}, name))
os.symlink({str(secret)!r}, {str(out / 'link')!r})
try:
    data = open({str(out / 'link')!r}).read()
except OSError as e:
    data = e.errno
try:
    os.symlink("/etc/passwd", {str(out / 'l2')!r}); d2 = open({str(out / 'l2')!r}).read()[:4]
except OSError as e:
    d2 = e.errno
print(json.dumps([data, d2]))"""
    r = await probe(code, effects=[{"effect": "FsWrite", "path": str(out)}])
    assert r.output[0] != "host secret"
    assert r.output[1] != "root"
    assert secret.read_text() == "host secret"


@pytest.mark.parametrize(
    ("name", "call"),
    [("ptrace", "libc.ptrace(0, 0, 0, 0)"), ("keyctl", "libc.syscall(250, 0, 0, 0, 0)"),
     ("mount", "libc.mount(b'none', b'/work', b'tmpfs', 0, None)"), ("unshare", "libc.unshare(0x10000000)"),
     ("bpf", "libc.syscall(321, 0, 0, 0)"), ("userfaultfd", "libc.syscall(323, 0)")],
)
async def test_dangerous_syscalls_are_denied(probe: Probe, name: str, call: str) -> None:
    code = J + f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
rc = {call}
print(json.dumps([rc, ctypes.get_errno()]))"""
    r = await probe(code)
    assert r.output[0] == -1, name
    assert r.output[1] in (1, 13, 22, 38), name  # EPERM (seccomp), EACCES, EINVAL, ENOSYS


async def test_infinite_loop_times_out_and_dies(probe: Probe) -> None:
    r = await probe("while True: pass", limits=Limits(timeout_s=1))
    assert r.status is Status.TIMED_OUT
    assert 900 <= r.wall_ms < 4000


async def test_sigterm_ignorer_and_double_fork_daemon_die_on_timeout(probe: Probe) -> None:
    code = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True: time.sleep(0.1)
    os._exit(0)
while True: time.sleep(0.1)"""
    r = await probe(code, limits=Limits(timeout_s=1))
    assert r.status is Status.TIMED_OUT


async def test_stdout_flood_is_cut_at_the_cap(probe: Probe) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    r = await probe("import sys\nwhile True: sys.stdout.write('x' * 65536)",
                    limits=Limits(timeout_s=10, max_output_bytes=1024 * 1024))
    assert r.status is Status.OUTPUT_LIMIT
    assert me.memory_info().rss - before < 64 * 1024 * 1024


async def test_stderr_flood_keeps_only_the_tail(probe: Probe) -> None:
    code = J + "for i in range(20000): sys.stderr.write('line %d\\n' % i)\nprint('1')"
    r = await probe(code, limits=Limits(timeout_s=10, max_stderr_bytes=4096))
    assert r.status is Status.OK
    assert len(r.stderr_tail) <= 4096 and r.stderr_tail.rstrip().endswith("line 19999")


async def test_memory_bomb_hits_the_memory_limit(probe: Probe) -> None:
    r = await probe("a = []\nwhile True: a.append(bytearray(32 * 1024 * 1024))",
                    limits=Limits(timeout_s=10, memory_bytes=128 * 1024 * 1024))
    assert r.status in (Status.MEMORY_LIMIT, Status.ERROR)
    assert r.status is Status.MEMORY_LIMIT or "MemoryError" in r.stderr_tail


async def test_fork_bomb_hits_the_process_limit(probe: Probe) -> None:
    r = await probe("import os\nwhile True: os.fork()", limits=Limits(timeout_s=10, max_pids=32))
    assert r.status in (Status.PIDS_LIMIT, Status.ERROR, Status.TIMED_OUT)
    assert r.status is not Status.OK


async def test_disk_fill_is_bounded(probe: Probe) -> None:
    code = J + """
written = 0
try:
    with open('/work/fill', 'wb') as f:
        while True:
            f.write(b'x' * 1048576); written += 1
except OSError as e:
    print(json.dumps([written, e.errno]))"""
    r = await probe(code, limits=Limits(timeout_s=10, tmpfs_size_bytes=8 * 1024 * 1024))
    assert r.status is Status.OK and r.output[0] <= 8


async def test_non_json_stdout_is_a_protocol_error(probe: Probe) -> None:
    r = await probe("print('hello'); print('world')")
    assert r.status is Status.PROTOCOL_ERROR
    assert "'hello\\nworld\\n'" in r.message


async def test_parallel_stages_do_not_see_each_other(probe: Probe) -> None:
    results = {}

    async def one(tag: str) -> None:
        code = J + f"open('/work/{tag}', 'w').write('x')\nimport time; time.sleep(0.3)\nprint(json.dumps(sorted(os.listdir('/work'))))"
        results[tag] = (await probe(code)).output

    async with trio.open_nursery() as n:
        n.start_soon(one, "a")
        n.start_soon(one, "b")
    assert results == {"a": ["a"], "b": ["b"]}


async def test_cancellation_kills_the_tree(probe: Probe, sandbox_path: str) -> None:
    if sandbox_path == "blocking":
        pytest.skip("a thread cannot be cancelled: tests/sandbox/test_blocking.py interrupts a one-shot run instead")
    with trio.move_on_after(0.5) as scope:
        await probe("import time\nwhile True: time.sleep(0.1)", limits=Limits(timeout_s=30))
    assert scope.cancelled_caught
