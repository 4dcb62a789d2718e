"""Run untrusted Python (model-written code) in a throw-away, limited, network-less process.

    result = run_python("print(1 + 1)", timeout=5, memory_mb=512)
    result = run_tests(solution_source, tests_source, timeout=5)   # result.passed / result.total

Each run gets: a new session/process group; `unshare` network + PID + mount namespaces where
available; a private unprivileged UID (when we are root); rlimits (CPU, address space, processes,
open files, file size, no core); an empty environment (PATH only); `python -I -S -B`; a temporary
working directory owned by the run's UID and deleted afterwards; an audit hook blocking sockets,
exec/spawn, ctypes and writes outside that directory; stdout/stderr read in chunks and capped
(the run is killed when the cap is exceeded); a wall-clock limit after which the whole group is
killed; and after every run, whatever is left (group, namespace, processes and temp files under
the run's UID) is killed or deleted. See `_isolation.py` for the layers and their fallbacks.

Limits: only the standard library is importable (`-S`); code under test runs as `__solution__`
(its `if __name__ == "__main__":` block does not run) and cannot write outside its directory
(not even via `tempfile`). The tally is written by a harness in the same process as the tested
code; its records carry a per-run nonce the harness reads from stdin before the tested code runs,
so blind forgery fails, but a program that digs the nonce out of the harness's memory could forge
its tally: the sandbox contains hostile code, it does not make a score tamper-proof against it.

The audit hook is a tripwire, not a boundary (PEP 578): code can get past it, e.g. by replacing
`sys.audit` before `subprocess.run`, or with `_posixsubprocess.fork_exec` or `os.open(..., dir_fd=)`.
What then holds is the private UID (files, signals) and the namespaces (network, processes). So:
- root without namespaces: the network is guarded by the audit hook alone;
- not root (no private UID; the run is root of a user namespace, the calling user outside it): the
  files the calling user can write are guarded by the audit hook alone; the namespaces, rlimits,
  empty environment, wall/output limits and work dir still hold;
- not root and no namespaces: the caller's own processes (`os.kill`), their environments
  (`/proc/PID/environ`) and the network are guarded by the audit hook alone as well.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import secrets
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rewards import _isolation as iso

CHILD = Path(__file__).with_name("_sandbox_child.py")
STATUSES = ("ok", "timeout", "memory", "error", "output_limit")


@dataclass
class SandboxResult:
    status: str  # one of STATUSES: how the run ended (failed asserts still end 'ok')
    returncode: int | None
    stdout: str
    stderr: str  # the tail, truncated
    passed: int = 0
    total: int = 0
    elapsed: float = 0.0
    isolation: str = ""

    @property
    def failed(self) -> int:
        return self.total - self.passed

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.status == "ok" and self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds
    memory_mb: int = 512  # address space
    max_output: int = 1 << 20  # bytes of stdout + stderr
    nproc: int = 32  # processes + threads of the run's UID (without a private UID: on top of the caller's)
    nofile: int = 64
    fsize_mb: int = 16
    stderr_tail: int = 4000  # characters of stderr kept in the result
    namespaces: bool = True  # network/PID/mount namespaces via `unshare`, when available
    drop_privileges: bool = True  # a private UID per run, when we are root
    audit: bool = True  # the in-process audit hook


def run_python(source: str, timeout: float = 5.0, memory_mb: int = 512, **limits) -> SandboxResult:
    """Run `source` as `__main__`; passed/total is 1/1 when it exits 0."""
    return _run("script", {"main.py": source}, 1, Limits(timeout=timeout, memory_mb=memory_mb, **limits))


def run_tests(solution: str, tests: str, timeout: float = 5.0, memory_mb: int = 512, **limits) -> SandboxResult:
    """Run `solution`, then each top-level statement of `tests`; counts the top-level asserts
    (a test file without any counts as one check). Raises SyntaxError for broken `tests`."""
    total = max(1, count_checks(tests))
    files = {"solution.py": solution, "tests.py": tests}
    return _run("tests", files, total, Limits(timeout=timeout, memory_mb=memory_mb, **limits))


def count_checks(tests: str) -> int:
    return sum(isinstance(node, ast.Assert) for node in ast.parse(tests).body)


def _run(mode: str, files: dict[str, str], total: int, lim: Limits) -> SandboxResult:
    drop = lim.drop_privileges and iso.is_root()
    prefix = iso.namespace_prefix() if lim.namespaces else ()
    if prefix and "--user" in prefix:
        drop = False  # root of a user namespace cannot switch to an unmapped UID
    uid = iso.acquire_uid() if drop else 0
    workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    try:
        for name, text in files.items():
            Path(workdir, name).write_text(text, encoding="utf-8")
        if uid:
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        cmd = [*prefix, iso.sandbox_python(drop), "-I", "-S", "-B", str(CHILD), mode, str(uid), str(write_fd),
               "1" if lim.audit else "0"]
        preexec = functools.partial(iso.set_limits, math.ceil(lim.timeout) + 1, lim.memory_mb,
                                    iso.nproc_limit(lim.nproc, bool(uid)), lim.nofile, lim.fsize_mb)
        proc = subprocess.Popen(cmd, cwd=workdir, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_fd,),
                                start_new_session=True, preexec_fn=preexec)
        os.close(write_fd)
        write_fd = -1
        nonce = secrets.token_hex(16)  # tags the harness's records; read before the tested code runs
        try:
            proc.stdin.write(f"{nonce}\n".encode())
            proc.stdin.close()
        except OSError:
            pass
        try:
            status, out, err, records = _collect(proc, read_fd, start + lim.timeout, lim.max_output)
            records = [r for r in records if isinstance(r, dict) and r.pop("n", None) == nonce]
        finally:
            iso.kill_group(proc.pid)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
            if uid:
                iso.sweep_uid(uid)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        if uid:
            iso.release_uid(uid)
    return _result(status, proc.returncode, out, err, records, total, lim, time.monotonic() - start,
                   isolation="+".join(filter(None, ["namespaces" if prefix else "", f"uid {uid}" if uid else "",
                                                     "audit" if lim.audit else ""])))


def _collect(proc: subprocess.Popen, result_fd: int, deadline: float, cap: int):
    """Read stdout, stderr and the result pipe until all close (or the run ends badly)."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), result_fd: bytearray()}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    status, exited_at, size = None, None, 0
    while sel.get_map() and status is None:
        now = time.monotonic()
        if now >= deadline:
            status = "timeout"
            break
        for key, _ in sel.select(min(deadline - now, 0.05)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                continue
            bufs[key.fd] += chunk
            size += len(chunk) if key.fd != result_fd else 0
            if size > cap or len(bufs[result_fd]) > cap:
                status = "output_limit"
                break
        if exited_at is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > 0.2:
            break  # exited, but something it left behind holds the pipes open: killed below
    sel.close()
    records = []
    for line in bufs[result_fd].decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return status, bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), records


def _result(status, returncode, out, err, records, total, lim, elapsed, isolation) -> SandboxResult:
    stderr = err.decode("utf-8", "replace")
    # records carry the run's nonce, and later ones win (the harness writes a unit's record after running it)
    units = {r["unit"]: bool(r.get("ok")) for r in records if isinstance(r.get("unit"), int)}
    done = next((r for r in reversed(records) if r.get("done")), None)
    passed = sum(ok for unit, ok in units.items() if 0 <= unit < total)
    if status is None:
        if returncode in (-24, 128 + 24):  # SIGXCPU: the CPU-time limit
            status = "timeout"
        elif "MemoryError" in stderr or (done or {}).get("memory"):
            status = "memory"
        elif done is None or done.get("total") != total or returncode != 0:
            status = "error"
        else:
            status = "ok"
    return SandboxResult(status, returncode, out.decode("utf-8", "replace")[:lim.max_output],
                         stderr[-lim.stderr_tail:], passed, total, round(elapsed, 3), isolation)
