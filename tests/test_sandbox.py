"""The sandbox under hostile code: every attack is contained within its limits and the test process
(and its other processes and files) is unharmed. Layers are also checked one at a time, and each
containment test has a control run showing the attack would otherwise be seen."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rewards import _isolation as iso
from rewards.sandbox import run_python, run_tests
from tests.conftest import listen

ROOT = os.geteuid() == 0
HAS_NS = bool(iso.namespace_prefix())
needs_root = pytest.mark.skipif(not ROOT, reason="a private UID per run needs root")
needs_ns = pytest.mark.skipif(not HAS_NS, reason="unshare namespaces are not available here")


def sandbox_pids() -> list[int]:
    """Live (non-zombie) processes under any sandbox UID."""
    return iso.live_pids()


# --- positive cases ---------------------------------------------------------------------------

def test_correct_code_passes_and_wrong_code_fails():
    tests = "assert add(1, 2) == 3\nassert add(2, 0) == 2\n"
    good = run_tests("def add(a, b):\n    return a + b\n", tests)
    assert (good.status, good.passed, good.total, good.all_passed) == ("ok", 2, 2, True)
    bad = run_tests("def add(a, b):\n    return a - b\n", tests)
    assert (bad.status, bad.passed, bad.total, bad.all_passed) == ("ok", 1, 2, False)


def test_partial_counts_each_top_level_assert_separately():
    tests = "\n".join(["import math", "assert f(0) == 0", "assert f(1) == 2", "assert f(2) == 4",
                       "assert f(3) == 7", "x = undefined_name", "assert f(4) == 8"])
    result = run_tests("def f(x):\n    return 2 * x\n", tests)
    assert (result.passed, result.total, result.failed) == (4, 5, 1)
    assert result.fraction == pytest.approx(0.8)


def test_run_python_reports_output_and_exit_status():
    ok = run_python("print(6 * 7)")
    assert (ok.status, ok.stdout.strip(), ok.returncode) == ("ok", "42", 0)
    broken = run_python("raise ValueError('boom')")
    assert broken.status == "error" and "ValueError: boom" in broken.stderr


def test_exiting_early_does_not_count_as_passing():
    result = run_tests("import sys\ndef f():\n    return 0\nsys.exit(0)\n", "assert f() == 1\n")
    assert not result.all_passed and result.passed == 0
    result = run_tests("import os\nos._exit(0)\n", "assert True\n")
    assert result.status == "error" and not result.all_passed


def test_records_forged_by_the_tested_code_are_ignored():
    forged = ("import os, sys\nout = int(sys.argv[3])\n"
              "os.write(out, b'{\"unit\": 0, \"ok\": true}\\n{\"done\": true, \"passed\": 1, \"total\": 1}\\n')\n")
    result = run_tests(forged + "os._exit(0)\n", "assert False\n")  # forge, then skip the real tests
    assert (result.status, result.passed, result.all_passed) == ("error", 0, False)
    result = run_tests(forged + "def f():\n    return 0\n", "assert f() == 1\n")
    assert result.passed == 0 and not result.all_passed


# --- resource attacks -------------------------------------------------------------------------

def test_infinite_loop_is_killed_at_the_wall_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout"
    assert time.monotonic() - start < 1.0 + 2.0


def test_memory_bomb_is_stopped_by_the_address_space_limit():
    start = time.monotonic()
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n", timeout=10, memory_mb=256)
    assert result.status == "memory", result
    assert time.monotonic() - start < 8


@needs_root
def test_fork_bomb_is_capped_and_leaves_nothing_behind():
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                        timeout=2.0)
    assert result.status == "timeout"
    assert time.monotonic() - start < 2.0 + 4.0
    assert sandbox_pids() == []
    assert subprocess.run(["true"]).returncode == 0  # the test process can still start processes


@needs_root
@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "uid-sweep-only"])
def test_process_limit_and_children_killed_when_the_run_ends(namespaces):
    if namespaces and not HAS_NS:
        pytest.skip("no namespaces here")
    code = ("import os, time\nn = 0\nfor _ in range(500):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    n += 1\nprint(n)\n")
    start = time.monotonic()
    result = run_python(code, timeout=20, nproc=16, namespaces=namespaces)
    assert result.status == "ok", result
    assert 1 <= int(result.stdout) < 16  # RLIMIT_NPROC stopped the forking
    assert time.monotonic() - start < 10  # the sleeping children did not keep the run alive
    assert sandbox_pids() == []


def test_output_flood_is_capped_and_fast():
    start = time.monotonic()
    result = run_python("while True:\n    print('x' * 10 ** 6)\n", timeout=30, max_output=1 << 20)
    assert result.status == "output_limit"
    assert len(result.stdout) <= 1 << 20
    assert time.monotonic() - start < 5
    result = run_python("import sys\nwhile True:\n    sys.stderr.write('e' * 10 ** 6)\n", timeout=30)
    assert result.status == "output_limit" and time.monotonic() - start < 10


# --- escapes ----------------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("layers", [{}, {"audit": False}], ids=["all-layers", "uid-only"])
def test_files_outside_the_work_dir_survive(shared_dir, layers):
    canary = shared_dir / "canary.txt"
    canary.write_text("canary")
    canary.chmod(0o644)
    code = (f"p = {str(canary)!r}\nprint('READ', open(p).read())\n"
            "for attempt in ('write', 'remove', 'rename'):\n    try:\n"
            "        if attempt == 'write':\n            open(p, 'w').write('pwned')\n"
            "        elif attempt == 'remove':\n            import os; os.remove(p)\n"
            "        else:\n            import os; os.rename(p, p + '.moved')\n"
            "        print('DID', attempt)\n    except OSError as e:\n        print('DENIED', attempt)\n")
    result = run_python(code, **layers)
    assert "READ canary" in result.stdout  # the file was reachable: only permissions protected it
    assert result.stdout.count("DENIED") == 3 and "DID" not in result.stdout
    assert canary.read_text() == "canary"


@needs_root
def test_file_control_without_isolation_is_detected(shared_dir):
    """Control: with the UID drop and audit hook off (root), the same write goes through."""
    canary = shared_dir / "control.txt"
    canary.write_text("canary")
    result = run_python(f"open({str(canary)!r}, 'w').write('pwned')", drop_privileges=False, audit=False)
    assert result.status == "ok" and canary.read_text() == "pwned"


@needs_root
def test_litter_in_shared_tmp_is_removed():
    name = f"/tmp/posttrain-sbx-litter-{os.getpid()}"
    result = run_python(f"open({name!r}, 'w').write('x')\nprint('WROTE')", audit=False)
    assert "WROTE" in result.stdout
    assert not os.path.exists(name)


def test_parent_environment_is_not_visible(monkeypatch):
    token = f"secret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("POSTTRAIN_SECRET", token)
    code = (f"import os\nprint(dict(os.environ))\nfor p in ('/proc/self/environ', '/proc/{os.getpid()}/environ',"
            " '/proc/1/environ'):\n    try:\n        print(open(p, 'rb').read())\n"
            "    except OSError as e:\n        print('DENIED', p)\n")
    result = run_python(code)
    assert "PATH" in result.stdout  # the code ran and printed its environment
    assert token not in result.stdout and token not in result.stderr


@needs_root
def test_root_only_file_is_not_readable(shared_dir):
    token = f"top-secret-{time.time_ns()}"
    secret = shared_dir / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    result = run_python(f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError:\n    print('DENIED')\n",
                        audit=False)
    assert "DENIED" in result.stdout and token not in result.stdout + result.stderr


@pytest.mark.parametrize("layers", [
    {}, pytest.param({"audit": False}, marks=needs_ns), {"namespaces": False}],
    ids=["all-layers", "network-namespace-only", "audit-hook-only"])
def test_network_is_unreachable(layers):
    port, received, stop, server = listen()
    code = (f"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    s.sendall(b'exfiltrated')\n    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e)\n")
    try:
        result = run_python(code, **layers)
        time.sleep(0.3)
    finally:
        stop.set()
        server.close()
    assert "BLOCKED" in result.stdout and "CONNECTED" not in result.stdout
    assert received == []


def test_network_control_without_isolation_is_detected():
    port, received, stop, server = listen()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hello')\n"
    try:
        run_python(code, namespaces=False, audit=False)
        deadline = time.monotonic() + 3
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        server.close()
    assert received == [b"hello"]


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
def test_cannot_kill_the_parent_or_its_other_processes(namespaces):
    if namespaces and not HAS_NS:
        pytest.skip("no namespaces here")
    if not namespaces and not ROOT:
        pytest.skip("without namespaces, only a different UID stops the signals")
    helper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        code = (f"import os\nfor name, fn in [('test', lambda: os.kill({os.getpid()}, 9)),"
                f" ('helper', lambda: os.kill({helper.pid}, 9)), ('helper-group', lambda: os.killpg({helper.pid}, 9)),"
                f" ('test-group', lambda: os.killpg({os.getpgrp()}, 9)), ('ppid', lambda: os.kill(os.getppid(), 9))]:\n"
                "    try:\n        fn()\n        print('SENT', name, flush=True)\n"
                "    except OSError:\n        print('FAILED', name, flush=True)\n"
                "os.kill(-1, 9)\n")
        result = run_python(code, namespaces=namespaces)
        assert helper.poll() is None  # the other root process is alive
        print(result.stdout)
        assert "FAILED helper-group" in result.stdout  # the attempts ran (and failed)
        assert "SENT helper" not in result.stdout and "SENT test" not in result.stdout
    finally:
        helper.kill()
        helper.wait()


@needs_root
@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "uid-sweep-only"])
def test_detached_grandchild_does_not_outlive_the_run(shared_dir, namespaces):
    if namespaces and not HAS_NS:
        pytest.skip("no namespaces here")
    drop = shared_dir / "drop"
    drop.mkdir()
    drop.chmod(0o777)

    def code(delay: float, linger: float) -> str:
        return (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                f"        time.sleep({delay})\n"
                f"        open({str(drop / 'marker')!r} + str({delay}), 'w').write('alive')\n"
                f"        os._exit(0)\n    os._exit(0)\ntime.sleep({linger})\nprint('PARENT DONE')\n")

    control = run_python(code(0.0, 1.0), namespaces=namespaces, audit=False)  # writes while the run lives
    assert "PARENT DONE" in control.stdout and (drop / "marker0.0").exists()
    result = run_python(code(1.0, 0.0), namespaces=namespaces, audit=False)  # would write after it ends
    assert "PARENT DONE" in result.stdout and result.elapsed < 1.0
    time.sleep(2.0)
    assert not (drop / "marker1.0").exists()
    assert sandbox_pids() == []


def test_work_dir_is_private_and_removed():
    result = run_python("import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('ok')\nprint(os.listdir('.'))")
    workdir = result.stdout.splitlines()[0]
    assert "scratch.txt" in result.stdout and workdir.startswith(tempfile.gettempdir())
    assert not os.path.exists(workdir)


# --- escapes past the audit hook: exec, ctypes, symlinks -------------------------------------

def _wait_for(received: list, count: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def _exec_attacks(canary: Path, port: int) -> str:
    """Code that starts programs every way it can, to write `canary` or connect to `port`; prints
    `STOPPED name Error message` for each attempt that raised and `DID name` for each that returned;
    ends with an `os.execv` (no line when it went through)."""
    write = f"echo pwned > {shlex.quote(str(canary))}"
    net = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'exec')"
    then_net = f'{write}; exec "$0" -c {shlex.quote(net)}'  # $0: the interpreter
    return (
        "import os, subprocess, sys\n"
        "def system():\n"
        f"    if os.system({write!r}):\n        raise OSError('sh failed')\n"
        "def posix_spawn():\n"
        f"    pid = os.posix_spawn('/bin/sh', ['sh', '-c', {write!r}], {{}})\n"
        "    if os.waitpid(pid, 0)[1]:\n        raise OSError('sh failed')\n"
        "def unaudited(cmd):  # subprocess's own audit call is a Python-level `sys.audit(...)`: replace it\n"
        "    real, sys.audit = sys.audit, lambda *args: None\n"
        "    try:\n        subprocess.run(cmd, check=True)\n    finally:\n        sys.audit = real\n"
        "attempts = [\n"
        f"    ('subprocess-sh', lambda: subprocess.run(['sh', '-c', {write!r}], check=True)),\n"
        f"    ('subprocess-net', lambda: subprocess.run([sys.executable, '-c', {net!r}], check=True)),\n"
        "    ('system', system), ('posix_spawn', posix_spawn),\n"
        f"    ('unaudited-sh', lambda: unaudited(['sh', '-c', {write!r}])),\n"
        f"    ('unaudited-net', lambda: unaudited([sys.executable, '-c', {net!r}]))]\n"
        "for name, attempt in attempts:\n"
        "    try:\n        attempt()\n        print('DID', name, flush=True)\n"
        "    except Exception as e:\n        print('STOPPED', name, type(e).__name__, e, flush=True)\n"
        "try:\n"
        f"    os.execv('/bin/sh', ['sh', '-c', {then_net!r}, sys.executable])\n"
        "except Exception as e:\n    print('STOPPED execv', type(e).__name__, e, flush=True)\n")


EXEC_ATTEMPTS = ("subprocess-sh", "subprocess-net", "system", "posix_spawn", "unaudited-sh", "unaudited-net")


@needs_root
@needs_ns
@pytest.mark.parametrize("layers", [{}, {"audit": False}], ids=["all-layers", "uid-and-namespaces-only"])
def test_started_programs_cannot_write_outside_or_reach_the_network(shared_dir, layers):
    """subprocess / os.system / posix_spawn / execv are stopped by the audit hook; a program started past
    the hook (here: `sys.audit` replaced before `subprocess.run`) runs, as the private UID, in the
    network namespace: it can neither write the canary nor connect."""
    canary = shared_dir / "canary.txt"
    canary.write_text("canary")
    canary.chmod(0o644)
    port, received, stop, server = listen()
    try:
        result = run_python(_exec_attacks(canary, port), **layers)
        time.sleep(0.3)
    finally:
        stop.set()
        server.close()
    assert all(f"STOPPED {name} " in result.stdout for name in EXEC_ATTEMPTS), result.stdout
    assert "DID" not in result.stdout
    assert canary.read_text() == "canary" and received == []
    if not layers:  # the hook stopped every audited way, and the unaudited ones failed at their target
        for name in ("subprocess-sh", "subprocess-net", "system", "posix_spawn", "execv"):
            assert f"STOPPED {name} PermissionError sandbox:" in result.stdout, result.stdout
        assert "STOPPED unaudited-sh CalledProcessError" in result.stdout
        assert "STOPPED unaudited-net CalledProcessError" in result.stdout
    else:  # every program ran, execv included (it replaced the interpreter), and failed at its target
        assert "STOPPED execv" not in result.stdout and "PermissionError sandbox:" not in result.stdout
        assert "Permission denied" in result.stderr and "Network is unreachable" in result.stderr


def test_started_programs_control_without_isolation_is_detected(shared_dir):
    """Control: with every layer off, the same programs write the canary and connect."""
    canary = shared_dir / "canary.txt"
    canary.write_text("canary")
    port, received, stop, server = listen()
    try:
        result = run_python(_exec_attacks(canary, port), namespaces=False, drop_privileges=False, audit=False)
        _wait_for(received, 3)
    finally:
        stop.set()
        server.close()
    assert all(f"DID {name}" in result.stdout for name in EXEC_ATTEMPTS), result.stdout
    assert canary.read_text() == "pwned\n" and received == [b"exec"] * 3  # two via subprocess, one via execv


def _ctypes_attacks(helper_pid: int, canary: Path, port: int | None) -> str:
    """Code calling libc directly (no Python-level audit event past `import ctypes`): kill, open for
    writing, connect; prints `name OK` or `name ERRNO-NAME` for each."""
    code = ("import ctypes, errno, os, struct\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def report(name, rc):\n"
            "    print(name, 'OK' if rc >= 0 else errno.errorcode[ctypes.get_errno()], flush=True)\n"
            f"report('kill', libc.kill({helper_pid}, 9))\n"
            f"fd = libc.open({str(canary).encode()!r}, os.O_WRONLY | os.O_TRUNC)\n"
            "report('open', fd)\n"
            "if fd >= 0:\n    libc.write(fd, b'pwned', 5)\n")
    if port is not None:
        code += ("s = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM\n"
                 f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
                 "rc = libc.connect(s, addr, len(addr))\n"
                 "report('connect', rc)\n"
                 "if rc == 0:\n    libc.write(s, b'ctypes', 6)\n")
    return code


@pytest.mark.parametrize("layers", [
    {},
    pytest.param({"audit": False}, marks=[needs_root, needs_ns]),
    pytest.param({"audit": False, "namespaces": False}, marks=needs_root)],
    ids=["all-layers", "uid-and-namespaces-only", "uid-only"])
def test_ctypes_calls_into_libc_are_contained(shared_dir, layers):
    """Which layer stops libc called through ctypes: the audit hook refuses `import ctypes` itself (it
    dlopens); past the hook, the PID namespace hides the helper (ESRCH), the private UID denies the
    write (EACCES) and the network namespace the connection (ENETUNREACH). With the UID only, the
    signal and the write are still denied (EPERM, EACCES); the network then has no layer left but the
    hook (see rewards/sandbox.py), so that variant does not try it."""
    canary = shared_dir / "canary.txt"
    canary.write_text("canary")
    canary.chmod(0o644)
    helper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    port, received, stop, server = listen()
    try:
        code = _ctypes_attacks(helper.pid, canary, None if layers.get("namespaces") is False else port)
        result = run_python(code, **layers)
        time.sleep(0.3)
        assert helper.poll() is None
    finally:
        stop.set()
        server.close()
        helper.kill()
        helper.wait()
    assert canary.read_text() == "canary" and received == []
    expected = {"all-layers": "", "uid-and-namespaces-only": "kill ESRCH\nopen EACCES\nconnect ENETUNREACH\n",
                "uid-only": "kill EPERM\nopen EACCES\n"}
    if not layers:
        assert "sandbox: ctypes.dlopen is not allowed" in result.stderr
        assert result.stdout == expected["all-layers"]
    else:
        assert result.stdout == expected["uid-only" if "namespaces" in layers else "uid-and-namespaces-only"]


def test_ctypes_control_without_isolation_is_detected(shared_dir):
    """Control: with every layer off, the same libc calls kill, write and connect."""
    canary = shared_dir / "canary.txt"
    canary.write_text("canary")
    helper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    port, received, stop, server = listen()
    try:
        result = run_python(_ctypes_attacks(helper.pid, canary, port), namespaces=False, drop_privileges=False,
                            audit=False)
        _wait_for(received, 1)
        assert helper.wait(timeout=5) == -9
    finally:
        stop.set()
        server.close()
        helper.kill()
        helper.wait()
    assert result.stdout == "kill OK\nopen OK\nconnect OK\n"
    assert canary.read_text() == "pwned" and received == [b"ctypes"]


def _symlink_attacks(shared: Path, canary: Path, secret: Path) -> str:
    """Links out of the work dir (straight, and made 'inside' for the hook by resolving its target from a
    sub-directory), then writes and reads through them; prints what happened and who said no."""
    return (
        "import errno, os\nW = os.getcwd()\n"
        "def link(target, name):\n"
        "    try:\n        os.symlink(target, name)\n        print('LINKED', os.path.basename(name))\n"
        "    except OSError as e:\n        print('NOLINK', os.path.basename(name), why(e))\n"
        "def why(e):\n    return 'hook' if str(e).startswith('sandbox:') else errno.errorcode[e.errno]\n"
        f"link({str(canary)!r}, 'canary-link')\nlink({str(secret)!r}, 'secret-link')\n"
        "os.makedirs('a/b')\nos.chdir('a/b')\n"
        f"link(os.path.relpath({str(shared)!r}, W), os.path.join(W, 'dir-link'))  # resolved from W by the kernel\n"
        "os.chdir(W)\n"
        f"print('OUTSIDE', os.path.realpath('dir-link') == {str(shared)!r})\n"
        "for path in ('canary-link', 'dir-link/canary.txt'):\n"
        "    try:\n        with open(path, 'r+') as f:\n            f.write('pwned')\n        print('WROTE', path)\n"
        "    except OSError as e:\n        print('DENIED write', path, why(e))\n"
        "for path in ('secret-link', 'dir-link/secret.txt'):\n"
        "    try:\n        print('READ', path, open(path).read())\n"
        "    except OSError as e:\n        print('DENIED read', path, why(e))\n")


@pytest.fixture
def canary_and_secret(shared_dir):
    canary, secret = shared_dir / "canary.txt", shared_dir / "secret.txt"
    canary.write_text("canary")
    canary.chmod(0o644)
    token = f"top-secret-{time.time_ns()}"
    secret.write_text(token)
    secret.chmod(0o600)
    return canary, secret, token


@needs_root
@pytest.mark.parametrize("layers", [{}, {"audit": False}], ids=["all-layers", "uid-only"])
def test_symlinks_out_of_the_work_dir_reach_nothing(shared_dir, canary_and_secret, layers):
    canary, secret, token = canary_and_secret
    result = run_python(_symlink_attacks(shared_dir, canary, secret), **layers)
    out = result.stdout
    assert "LINKED dir-link" in out and "OUTSIDE True" in out  # a link out of the work dir does exist
    assert "WROTE" not in out and "READ" not in out
    assert canary.read_text() == "canary" and token not in out + result.stderr
    if not layers:  # the hook refuses links to outside paths, and writes that resolve outside; the UID, reads
        assert "NOLINK canary-link hook" in out and "NOLINK secret-link hook" in out
        assert "DENIED write dir-link/canary.txt hook" in out and "DENIED read dir-link/secret.txt EACCES" in out
    else:  # past the hook: the private UID alone
        assert "LINKED canary-link" in out and "LINKED secret-link" in out
        assert out.count("DENIED write") == 2 and out.count("EACCES") == 4


@needs_root
def test_symlink_control_without_isolation_is_detected(shared_dir, canary_and_secret):
    """Control: with the UID drop and the hook off, the links write the canary and read the secret."""
    canary, secret, token = canary_and_secret
    result = run_python(_symlink_attacks(shared_dir, canary, secret), drop_privileges=False, audit=False)
    assert "WROTE canary-link" in result.stdout and f"READ secret-link {token}" in result.stdout
    assert canary.read_text().startswith("pwned")


@needs_root
def test_cleanup_does_not_follow_symlinks_left_behind(shared_dir):
    """Links the run leaves in its work dir, in /tmp, and in place of the work dir itself (renamed away)
    all lead to a directory outside; the cleanup removes the links and the renamed dir, not the target."""
    victim = shared_dir / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "keep.txt").write_text("keep")
    (victim / "keep.txt").chmod(0o644)
    litter = f"/tmp/posttrain-sbx-link-{os.getpid()}"
    code = (f"import os\nW, V = os.getcwd(), {str(victim)!r}\nprint(W)\n"
            "os.symlink(V, 'dir-link')\nos.symlink(V + '/keep.txt', 'file-link')\nos.mkdir('sub')\n"
            f"os.symlink(V, 'sub/deeper')\nos.symlink(V, {litter!r})\n"
            "print('SEES', open('dir-link/keep.txt').read(), open('sub/deeper/keep.txt').read())\n"
            "os.rename(W, W + '.moved')\nos.symlink(V, W)\nprint('SWAPPED', os.path.realpath(W) == V)\n")
    result = run_python(code, audit=False)  # the hook would refuse the links; this checks the cleanup
    workdir = result.stdout.splitlines()[0]
    assert "SEES keep keep" in result.stdout and "SWAPPED True" in result.stdout
    assert sorted(os.listdir(victim)) == ["keep.txt"] and (victim / "keep.txt").read_text() == "keep"
    assert [p for p in (workdir, workdir + ".moved", litter) if os.path.lexists(p)] == []


# --- without root: what still holds ----------------------------------------------------------

NOBODY = 65534
REWARDS = Path(__file__).resolve().parent.parent / "rewards"
_CALLER = """
import json, os, subprocess, sys, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rewards import _isolation as iso
from rewards.sandbox import run_python

idle = threading.Event()
for _ in range(40):  # a trainer has dozens of threads: RLIMIT_NPROC counts them all for this user
    threading.Thread(target=idle.wait, daemon=True).start()
runs = []
for code, layers in json.loads(sys.stdin.read()):
    helper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # another process of this user
    code = code.replace("HELPER_PID", str(helper.pid)).replace("CALLER_PID", str(os.getpid()))
    r = run_python(code, **layers)
    runs.append({"status": r.status, "stdout": r.stdout, "stderr": r.stderr, "elapsed": r.elapsed,
                 "isolation": r.isolation, "helper_alive": helper.poll() is None})
    helper.kill()
    helper.wait()
print(json.dumps({"euid": os.geteuid(), "namespaces": bool(iso.namespace_prefix()), "runs": runs}))
"""


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture(scope="module")
def non_root():
    """Runs sandboxes from a caller that is not root (uid `nobody`, 40 idle threads), with the sandbox's
    own modules: run(*[(code, layers)], env=) -> the caller's report. `HELPER_PID` in the code stands
    for a `sleep` of that caller, `CALLER_PID` for the caller itself."""
    if not ROOT:
        pytest.skip("switching to an unprivileged caller needs root (run as non-root, the whole file is that case)")
    home = Path(tempfile.mkdtemp(prefix="posttrain-sbx-nonroot-"))
    try:
        (home / "rewards").mkdir()
        for name in ("sandbox.py", "_isolation.py", "_sandbox_child.py"):
            shutil.copy(REWARDS / name, home / "rewards" / name)
        (home / "rewards" / "__init__.py").write_text("")
        (home / "caller.py").write_text(_CALLER)
        for path in (home, home / "rewards", *home.rglob("*.py")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        python = iso.sandbox_python(True)  # an interpreter an unprivileged user can run

        def run(*calls, env=None):
            proc = subprocess.run([python, "-I", "-S", "-B", str(home / "caller.py")], input=json.dumps(calls),
                                  capture_output=True, text=True, timeout=120, cwd=home, preexec_fn=_become_nobody,
                                  env={"PATH": "/usr/bin:/bin", **(env or {})})
            assert proc.returncode == 0, proc.stderr
            report = json.loads(proc.stdout)
            assert report["euid"] == NOBODY
            return report

        run.namespaces = run()["namespaces"]
        yield run
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _needs_user_namespaces(non_root):
    if not non_root.namespaces:
        pytest.skip("no unprivileged user namespaces here: without root, the network, the caller's processes "
                    "and environment are then guarded by the audit hook alone (see rewards/sandbox.py)")


def test_without_root_the_network_is_still_unreachable(non_root):
    """No private UID, but the network namespace (of a user namespace) and the hook still block; control:
    without both, the same unprivileged caller's sandbox connects."""
    _needs_user_namespaces(non_root)
    port, received, stop, server = listen()
    code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'%s')\n"
            "    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e)\n")
    try:
        report = non_root((code % "all", {}), (code % "ns", {"audit": False}),
                          (code % "control", {"namespaces": False, "audit": False}))
        _wait_for(received, 1)
        time.sleep(0.3)  # and for any other connection
    finally:
        stop.set()
        server.close()
    runs = report["runs"]
    assert [r["isolation"] for r in runs] == ["namespaces+audit", "namespaces", ""]  # no private UID
    assert ["BLOCKED" in r["stdout"] for r in runs] == [True, True, False]
    assert received == [b"control"]


def test_without_root_limits_hold_for_a_caller_with_many_threads(non_root):
    """Wall, memory, output and process limits still hold without root; the process cap is counted on
    top of the caller's own 40+ threads (before that, `unshare: fork failed` made every run an error)."""
    forks = ("import os, time\nn = 0\nfor _ in range(500):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
             "    n += 1\nprint(n)\n")
    report = non_root(("print(6 * 7)", {}),
                      ("while True:\n    pass\n", {"timeout": 1.0}),
                      ("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",
                       {"timeout": 10, "memory_mb": 256}),
                      ("while True:\n    print('x' * 10 ** 6)\n", {"timeout": 30}),
                      (forks, {"timeout": 20, "nproc": 16}))
    ok, loop, memory, flood, fork = report["runs"]
    assert (ok["status"], ok["stdout"]) == ("ok", "42\n"), ok
    assert loop["status"] == "timeout" and loop["elapsed"] < 1.0 + 2.0
    assert memory["status"] == "memory" and memory["elapsed"] < 8
    assert flood["status"] == "output_limit" and len(flood["stdout"]) <= 1 << 20 and flood["elapsed"] < 5
    assert fork["status"] == "ok" and 1 <= int(fork["stdout"]) < 16, fork
    assert fork["elapsed"] < 10  # the sleeping children did not keep the run alive


def test_without_root_the_callers_processes_and_environment_stay_hidden(non_root):
    """The PID namespace (and mounted /proc) hides the caller's processes: no signal reaches them and
    their environments cannot be read. Control: without namespaces (and without root), both are
    exposed to the run (the hook guards neither `os.kill` nor reading /proc/PID/environ)."""
    _needs_user_namespaces(non_root)
    token = f"secret-{time.time_ns()}"
    code = ("import os\nprint(dict(os.environ))\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['CALLER_PID']:\n"
            "    try:\n        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError as e:\n        print('DENIED', pid, e)\n"
            "for target in (HELPER_PID, CALLER_PID, -1):\n"
            "    try:\n        os.kill(target, 9)\n        print('SENT', target)\n"
            "    except OSError as e:\n        print('FAILED', target, e)\n")
    report = non_root((code, {}), (code.replace(", CALLER_PID, -1)", ",)"), {"namespaces": False}),
                      env={"POSTTRAIN_SECRET": token})  # the control does not kill its caller
    hidden, exposed = report["runs"]
    assert "PATH" in hidden["stdout"] and token not in hidden["stdout"] + hidden["stderr"]
    assert hidden["helper_alive"] and "SENT" not in hidden["stdout"], hidden["stdout"]
    assert token in exposed["stdout"] and not exposed["helper_alive"], exposed["stdout"][-600:]


def test_without_root_files_are_guarded_by_permissions_and_the_hook_only(non_root, shared_dir, canary_and_secret):
    """Root's files stay protected by their permissions even past the hook. NOT protected without root:
    files the calling user can write. Only the audit hook guards them, and the hook can be got past
    (e.g. `sys.audit` replaced before `subprocess.run`, `_posixsubprocess.fork_exec`, `os.open(dir_fd=)`):
    the control shows the run writing such a file once the hook is off."""
    canary, secret, token = canary_and_secret
    own = shared_dir / "own"
    own.mkdir(mode=0o755)
    (own / "mine.txt").write_text("mine")
    for path in (own, own / "mine.txt"):
        os.chown(path, NOBODY, NOBODY)
    code = ("import errno\n"
            "def why(e):\n    return 'hook' if str(e).startswith('sandbox:') else errno.errorcode[e.errno]\n"
            f"for path in ({str(canary)!r}, {str(own / 'mine.txt')!r}):\n"
            "    try:\n        with open(path, 'r+') as f:\n            f.write('pwned')\n"
            "        print('WROTE', path)\n    except OSError as e:\n        print('DENIED', path, why(e))\n"
            f"try:\n    print(open({str(secret)!r}).read())\n"
            "except OSError as e:\n    print('DENIED secret', why(e))\n")
    with_hook, without = non_root((code, {}), (code, {"audit": False}))["runs"]
    assert with_hook["stdout"] == f"DENIED {canary} hook\nDENIED {own / 'mine.txt'} hook\nDENIED secret EACCES\n"
    assert without["stdout"] == f"DENIED {canary} EACCES\nWROTE {own / 'mine.txt'}\nDENIED secret EACCES\n"
    assert canary.read_text() == "canary" and (own / "mine.txt").read_text() == "pwned"
