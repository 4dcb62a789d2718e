"""`code`: the answer's final python block against the sample's tests, in the sandbox."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import rewards
from rewards.code_exec import extract_code
from tests.conftest import listen

TESTS = "assert square(2) == 4\nassert square(-3) == 9\nassert square(0) == 0\nassert square(5) == 25\n"
GOOD = "Here it is:\n```python\ndef square(x):\n    return x * x\n```"
LOOP = "```python\ndef square(x):\n    while True:\n        pass\n```"


@pytest.fixture(scope="module")
def code():
    return rewards.get("code", timeout=2)


def test_correct_wrong_malformed_and_empty(code):
    texts = [GOOD,
             "```python\ndef square(x):\n    return x + x\n```",  # wrong (passes 2 of 4)
             "```python\ndef square(x) return x\n```",  # syntax error
             "def square(x):\n    return x * x",  # no code block
             ""]
    assert code(texts, tests=[TESTS] * 5) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_partial_credit_is_the_fraction_of_asserts():
    partial = rewards.get("code", partial=True, timeout=2)
    texts = [GOOD, "```python\ndef square(x):\n    return x + x\n```", "```python\nsquare = abs\n```", ""]
    assert partial(texts, tests=[TESTS] * 4) == [1.0, 0.5, 0.25, 0.0]  # abs passes only square(0)


def test_only_the_final_python_block_after_think_is_run(code):
    draft = "```python\ndef square(x):\n    return 0\n```\nActually:\n" + GOOD
    in_think = "<think>\n" + GOOD + "\n</think>\n\nI could not do it."
    unterminated = "<think>\n" + GOOD
    assert code([draft, in_think, unterminated], tests=[TESTS] * 3) == [1.0, 0.0, 0.0]


def test_conversational_completions_and_missing_or_broken_tests(code):
    conv = [[{"role": "assistant", "content": GOOD}]] * 3
    assert code(conv, tests=[TESTS, None, "assert (\n"]) == [1.0, None, None]


def test_timeouts_are_contained_and_parallel():
    timeout, loops = 1.5, 8
    code = rewards.get("code", timeout=timeout)  # default workers: 4
    texts = [LOOP] * 4 + [GOOD] + [LOOP] * (loops - 4)
    start = time.monotonic()
    assert code(texts, tests=[TESTS] * len(texts)) == [0.0] * 4 + [1.0] + [0.0] * (loops - 4)
    # four workers: two rounds of timeouts (~2 x 1.5 s); one at a time would take >= 8 x 1.5 s = 2 x the bound
    assert time.monotonic() - start < 4 * timeout


def test_hostile_solutions_score_zero(code, shared_dir):
    """Each snippet attacks first and defines a correct `square` after: only the sandbox stopping the attack
    (the attack raises, so `square` is never defined) keeps it from scoring 1.0. Then nothing was reached."""
    canary, new_file, via_shell = (shared_dir / name for name in ("canary.txt", "created.txt", "shell.txt"))
    canary.write_text("canary")
    canary.chmod(0o644)
    before = canary.stat()
    helper, parent = subprocess.Popen(["sleep", "60"], start_new_session=True), os.getppid()
    port, received, stop, server = listen()
    square = "def square(x):\n    return x * x\n"
    attacks = {
        "kill-helper": f"import os\nos.kill({helper.pid}, 9)\n",
        "kill-helper-group": f"import os\nos.killpg({helper.pid}, 9)\n",
        "kill-test": f"import os\nos.kill({os.getpid()}, 9)\n",
        "kill-test-parent": f"import os\nos.kill({parent}, 9)\n",
        "connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n",
        "write-canary": f"open({str(canary)!r}, 'w').write('pwned')\n",
        "create-outside": f"open({str(new_file)!r}, 'w').write('pwned')\n",
        "os-system": f"import os\nassert os.system('echo pwned > {via_shell}') == 0\n",
    }
    if os.geteuid() == 0:  # past the audit hook's exec check (pure Python): only the private UID stops it
        attacks["subprocess-unaudited"] = ("import subprocess, sys\nsys.audit = lambda *args: None\n"
                                           f"subprocess.run(['sh', '-c', 'echo pwned > {via_shell}'], check=True)\n")
    texts = [f"```python\n{attack}{square}```" for attack in attacks.values()]
    texts.append(f"```python\n{square}print('x' * 10 ** 8)\n```")  # correct, then floods the output
    texts.append(f"```python\n{square}import os\ntry:\n    os.kill({helper.pid}, 9)\nexcept OSError:\n    pass\n```")
    texts.append(GOOD)
    try:
        scores = code(texts, tests=[TESTS] * len(texts))
        time.sleep(0.3)  # let the listener record any late connection
        assert helper.poll() is None  # the test's other process is alive (and so is the test: it got here)
        assert os.getppid() == parent  # and so is its parent (else the test would have been re-parented)
    finally:
        stop.set()
        server.close()
        helper.kill()
        helper.wait()
    assert dict(zip(attacks, scores, strict=False)) == dict.fromkeys(attacks, 0.0)
    assert scores[len(attacks):] == [0.0, 1.0, 1.0]  # flood: output cap; contained attack caught: still correct
    assert received == []
    assert canary.read_text() == "canary" and canary.stat().st_mtime_ns == before.st_mtime_ns
    assert not new_file.exists() and not via_shell.exists()


def test_extract_code():
    assert extract_code("```py\na = 1\n```\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```\nc = 3\n```") == "c = 3\n"
    assert extract_code("```python\nd = 4\n```\n```\nplain\n```") == "d = 4\n"
    assert extract_code("no code") is None


def test_unknown_sandbox_limit_is_rejected_at_construction():
    with pytest.raises(TypeError):
        rewards.get("code", not_a_limit=1)
