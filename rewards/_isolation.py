"""The sandbox's isolation plumbing: namespaces, a private UID per run, rlimits, leftover sweeping.

Layers (each one also holds when another is missing):
- `unshare --net --pid --fork --kill-child --mount-proc` (as root; else tried inside a user
  namespace with `--user --map-root-user`): no network interface but a downed loopback, and a PID
  namespace whose init is the sandboxed interpreter, so every process it starts (double-forked,
  setsid'ed or not) dies with it.
- A private, unused UID per concurrent run (when we are root): no access to the parent's files, no
  signals to other users' processes, RLIMIT_NPROC counted for this run alone, and anything left
  under that UID (processes, files in /tmp, /var/tmp, /dev/shm) is swept after the run.
- rlimits set in `preexec_fn`; the audit hook inside the child (`_sandbox_child.py`) blocks
  sockets, exec/spawn, ctypes and writes outside the work directory.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

UID_BASE = 200_000  # private UIDs: UID_BASE + (pid % 32768) * 64 + slot, none has a passwd entry
_SLOTS = 64
_slot_lock = threading.Lock()
_free_slots = list(range(_SLOTS))
_slot_available = threading.Condition(_slot_lock)
NS_FLAGS = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc")
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")


def is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` command line that works here, or () when none does."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not unshare:
        return ()
    variants = [NS_FLAGS] if is_root() else []
    variants.append(("--user", "--map-root-user", *NS_FLAGS))
    for flags in variants:
        try:
            if subprocess.run([unshare, *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                return (unshare, *flags)
        except (OSError, subprocess.SubprocessError):
            pass
    return ()


@functools.cache
def sandbox_python(drop: bool) -> str:
    """An interpreter the sandbox user can run with its stdlib readable (ours may live under /root)."""
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable),
                  "/usr/bin/python3", "/usr/local/bin/python3"]
    candidates = list(dict.fromkeys(os.path.realpath(c) for c in candidates if c and os.path.exists(c)))
    if not drop:
        return candidates[0]
    uid = UID_BASE - 1  # a probe UID outside the per-run range
    for python in candidates:
        try:
            probe = subprocess.run([python, "-I", "-S", "-B", "-c", "import ast, json, traceback"],
                                   preexec_fn=functools.partial(_become, uid), env={}, cwd="/",
                                   capture_output=True, timeout=30)
            if probe.returncode == 0:
                return python
        except (OSError, subprocess.SubprocessError):
            pass
    raise RuntimeError(f"sandbox: no Python interpreter is usable by an unprivileged user (tried {candidates})")


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def acquire_uid(timeout: float = 60.0) -> int:
    """A private UID for one run (blocks while all slots of this process are busy)."""
    with _slot_available:
        if not _slot_available.wait_for(lambda: _free_slots, timeout=timeout):
            raise RuntimeError("sandbox: no free UID slot")
        slot = _free_slots.pop(0)  # least recently used: zombies of its last run are likely reaped
    return UID_BASE + (os.getpid() % 32768) * _SLOTS + slot


def release_uid(uid: int) -> None:
    with _slot_available:
        _free_slots.append((uid - UID_BASE) % _SLOTS)
        _slot_available.notify()


def set_limits(cpu_s: int, memory_mb: int, nproc: int, nofile: int, fsize_mb: int) -> None:
    """preexec_fn: runs in the child between fork and exec (async-signal-safe syscalls only)."""
    for which, value in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
                         (resource.RLIMIT_AS, (memory_mb << 20,) * 2),
                         (resource.RLIMIT_NPROC, (nproc,) * 2),
                         (resource.RLIMIT_NOFILE, (nofile,) * 2),
                         (resource.RLIMIT_FSIZE, (fsize_mb << 20,) * 2),
                         (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(which, value)


def nproc_limit(nproc: int, private_uid: bool) -> int:
    """RLIMIT_NPROC for a run: `nproc` for a private UID. Without one the kernel counts every task of the
    calling user (a trainer's threads included) against it, so the run gets `nproc` on top of what that
    user already has (capped at the hard limit); concurrent runs of the same user share that headroom."""
    if private_uid:
        return nproc
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    wanted = task_count(os.getuid()) + nproc
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def task_count(uid: int) -> int:
    """Tasks (threads of every process, zombies included) whose real UID is `uid`: what RLIMIT_NPROC counts."""
    return sum(int(fields.get(b"Threads", b"1")) for _, owner, fields in _processes(b"Threads:") if owner == uid)


def _processes(*keys: bytes):
    """(pid, real UID, {field: value}) of every process in /proc, with the status fields `keys` named."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if line.startswith((b"Uid:", *keys)))
            yield int(entry), int(fields[b"Uid"].split()[0]), fields
        except (OSError, ValueError, KeyError):
            continue


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def live_pids(uid: int | None = None) -> list[int]:
    """Processes (not zombies) running under `uid`, or under any sandbox UID when None."""
    return [pid for pid, owner, fields in _processes(b"State:")
            if not fields.get(b"State", b"").strip().startswith((b"Z", b"X"))
            and (owner == uid if uid is not None else owner >= UID_BASE)]


def sweep_uid(uid: int, rounds: int = 50) -> int:
    """Kill every process left under `uid` and delete its files in the shared temp dirs.
    Returns how many processes were killed. (Zombies are dead already; their new parent reaps them.)"""
    killed = 0
    for _ in range(rounds):
        pids = live_pids(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    for top in SHARED_TMP:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass
    return killed
