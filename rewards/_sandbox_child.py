"""Runs inside the sandbox (`python -I -S -B _sandbox_child.py MODE UID RESULT_FD AUDIT`), as a script.

It starts as the launching user (root, or root of a user namespace), drops to the sandbox UID when
given one, installs the audit hook, then runs `main.py` (MODE `script`) or `solution.py` followed by
each top-level statement of `tests.py` (MODE `tests`) from the current (throw-away) directory.
The first line of stdin is the run's nonce, read before any tested code runs and added to every
record as `"n"`. Progress goes to RESULT_FD as JSON lines: `{"unit": i, "ok": bool}` per top-level assert (or one
unit for the whole file when it has none), then `{"done": true, "passed": p, "total": t}`.
Only the standard library is importable (`-S`: no site-packages).
"""

import ast
import json
import os
import sys
import traceback

_WORKDIR = os.getcwd()
_BLOCKED = ("socket.__new__", "socket.bind", "socket.connect", "socket.sendto", "socket.getaddrinfo",
            "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork_exec", "subprocess.Popen",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "os.forkpty", "pty.spawn")
_PATH_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.link",
                "os.symlink", "os.mkdir", "os.utime", "shutil.rmtree", "shutil.move", "os.mkfifo")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path) -> bool:
    if isinstance(path, int):
        return True  # an already-open descriptor
    real = os.path.realpath(os.fsdecode(path))
    return real == _WORKDIR or real.startswith(_WORKDIR + os.sep) or real == os.devnull


def _audit(event: str, args: tuple) -> None:
    if event in _BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the work directory: {path!r}")
    elif event in _PATH_EVENTS and args and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox: {event} outside the work directory")


def _run(code, scope) -> BaseException | None:
    try:
        exec(code, scope)
        return None
    except BaseException as err:  # noqa: BLE001 - SystemExit and MemoryError included
        if not isinstance(err, (SystemExit, AssertionError)):
            traceback.print_exc()
        return err


def main() -> int:
    mode, uid, fd, audit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    nonce = sys.stdin.readline().strip()
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    def report(**record) -> None:
        os.write(fd, (json.dumps({**record, "n": nonce}) + "\n").encode())

    names = ["main.py"] if mode == "script" else ["solution.py", "tests.py"]
    sources = []
    for name in names:
        with open(name, encoding="utf-8") as f:
            sources.append(f.read())
    if audit:
        sys.addaudithook(_audit)
    scope = {"__name__": "__main__" if mode == "script" else "__solution__", "__builtins__": __builtins__}
    memory = False
    try:
        first = compile(sources[0], names[0], "exec")
    except (SyntaxError, ValueError) as err:
        traceback.print_exception(type(err), err, err.__traceback__)
        first = None
    err = _run(first, scope) if first is not None else SyntaxError(names[0])
    memory |= isinstance(err, MemoryError)
    if mode == "script":
        code = err.code if isinstance(err, SystemExit) else (1 if err else 0)
        ok = code in (0, None)
        report(unit=0, ok=ok)
        report(done=True, passed=int(ok), total=1, memory=memory)
        return code if isinstance(code, int) else (0 if code is None else 1)
    body = ast.parse(sources[1]).body
    checks = [isinstance(node, ast.Assert) for node in body]
    whole = not any(checks)  # no top-level assert: the whole file is one check
    passed = unit = 0
    all_ok = True
    for node, is_check in zip(body, checks, strict=True):
        err = _run(compile(ast.Module(body=[node], type_ignores=[]), "tests.py", "exec"), scope)
        memory |= isinstance(err, MemoryError)
        all_ok &= err is None
        if is_check:
            report(unit=unit, ok=err is None)
            passed, unit = passed + (err is None), unit + 1
    if whole:
        report(unit=0, ok=all_ok)
        passed = int(all_ok)
    report(done=True, passed=passed, total=max(unit, 1), memory=memory)
    return 0


if __name__ == "__main__":
    status = 1
    try:
        status = main()
    except BaseException:  # noqa: BLE001 - a broken harness run is an error result, not a hang
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(status if isinstance(status, int) and 0 <= status < 256 else 1)  # skip atexit and threads
