"""The sandbox under hostile code: every attack is contained within its limits and the test process
(and its other processes and files) is unharmed. Layers are also checked one at a time, and each
containment test has a control run showing the attack would otherwise be seen."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards import _isolation as iso
from rewards.sandbox import run_python, run_tests

ROOT = os.geteuid() == 0
HAS_NS = bool(iso.namespace_prefix())
needs_root = pytest.mark.skipif(not ROOT, reason="a private UID per run needs root")
needs_ns = pytest.mark.skipif(not HAS_NS, reason="unshare namespaces are not available here")


@pytest.fixture
def shared_dir():
    """A directory the sandbox user can traverse (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="posttrain-sbx-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


def _listen():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                received.append(conn.recv(1024) or b"<connected>")
            except OSError:
                received.append(b"<connected>")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], received, stop, server


@pytest.mark.parametrize("layers", [
    {}, pytest.param({"audit": False}, marks=needs_ns), {"namespaces": False}],
    ids=["all-layers", "network-namespace-only", "audit-hook-only"])
def test_network_is_unreachable(layers):
    port, received, stop, server = _listen()
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
    port, received, stop, server = _listen()
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
