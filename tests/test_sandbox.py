"""grpo_jax.sandbox: scores, the probe/judge split, and hostile programs (issue 27, sections 1-2).

Every hostile program must score 0 and leave the test process, its files and the machine as they
were: no process of the sandbox left (checked on the worker's process tree, and system-wide by a
unique process name the hostile program gives itself before forking), nothing written outside.
The sandbox tests skip, with the reason, where unprivileged user namespaces do not work.
"""
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from grpo_jax import sandbox
from grpo_jax.sandbox import Sandbox, SandboxUnavailable

F = "def f(x):\n    return 2 * x + 1\n"
TESTS = ["assert f(2) == 5", "assert f(0) == 1", "assert f(-3) == -5"]


@pytest.fixture(scope="module")
def box():
    try:
        pool = Sandbox(2, timeout_s=2.0, memory_mb=256, max_processes=8)
    except SandboxUnavailable as error:
        pytest.skip(f"no namespace sandbox on this machine: {error}")
    yield pool
    pool.close()


def _leftovers(pool: Sandbox) -> list:
    return [c for w in pool._workers for c in psutil.Process(w.proc.pid).children(recursive=True)]


def _named(token: str) -> list:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == token]


def _hostile(pool: Sandbox, code: str, tests=TESTS, **options) -> sandbox.Result:
    """Runs `code`, then checks the score is 0 and the pool has no process left."""
    result = pool.run(code, tests, **options)
    assert result.passed == 0, result
    assert not any(result.tests)
    assert _leftovers(pool) == []
    return result


# ---- scoring ---------------------------------------------------------------------------------


def test_correct_program_passes_all(box):
    result = box.run(F, TESTS)
    assert (result.passed, result.total, result.status, result.tests) == (3, 3, "ok", (True, True, True))
    assert result.fraction == 1.0


def test_wrong_program_fails_some(box):
    result = box.run("def f(x):\n    return 2 * x + 1 if x >= 0 else 0\n", TESTS)
    assert (result.passed, result.total, result.status, result.tests) == (2, 3, "failed", (True, True, False))


def test_syntax_error(box):
    result = box.run("def f(x) return x", TESTS)
    assert (result.passed, result.status) == (0, "syntax")
    assert "SyntaxError" in result.detail


def test_builtin_values_round_trip_and_trusted_calls(box):
    code = ("def g(x):\n    return {'a': [1, (2.5, None)], 'b': {3, 4}, 'c': b'x', 'd': 1 + 2j, 'e': frozenset()}\n"
            "def h(n):\n    return (i * i for i in range(n))\n")
    tests = [
        "assert g(0) == {'a': [1, (2.5, None)], 'b': {3, 4}, 'c': b'x', 'd': 1 + 2j, 'e': frozenset()}",
        "import math\nassert math.isclose(g(0)['a'][1][0], 2.5000001, rel_tol=1e-6)",
        "assert list(h(4)) == [0, 1, 4, 9]",  # a generator crosses as an iterator over its values
        "res = h(3)\nassert sorted(res) == [0, 1, 4]",
        "assert not g(0)['e'] and len(g(0)) == 5",
        "assert g(0) != {}",
        "assert sorted(g(0).keys()) == ['a', 'b', 'c', 'd', 'e'] and g(0).keys() == {'a', 'b', 'c', 'd', 'e'}",
        "assert list(enumerate(h(2))) == [(0, 0), (1, 1)] and [0, 1, 4] == list(map(int, h(3)))",
    ]
    result = box.run(code, tests)
    assert result.tests == (True,) * 8, result


def test_output_is_captured(box):
    result = box.run("print('hello from the program')\n" + F, TESTS)
    assert result.status == "ok" and "hello from the program" in result.output


def test_run_many_keeps_order(box):
    items = [(F, TESTS), ("def f(x):\n    return 5\n", TESTS), {"code": "while True: pass", "tests": TESTS,
                                                                 "timeout_s": 0.5}, (F, TESTS[:1])]
    results = box.run_many(items)
    assert [(r.passed, r.total, r.status) for r in results] == [(3, 3, "ok"), (1, 3, "failed"), (0, 3, "timeout"),
                                                                 (1, 1, "ok")]


def test_plan_splits_probes_from_checks():
    plan = sandbox._plan("def f(x): pass\ndef sorted(x): pass\n", [
        "assert f(2) == 5",
        "import math\nassert math.isclose(f(1), 2.5)",
        "assert set(f(3)) == set([1, 2])",
        "assert sorted(f(1)) == [1]",  # the program redefines sorted: it is the program's
    ])["plans"]
    assert plan[0] == [("assert", ["f(2)"], "_probe0 == 5")]
    assert plan[1] == [("both", "import math"), ("assert", ["f(1)"], "math.isclose(_probe0, 2.5)")]
    assert plan[2] == [("assert", ["f(3)"], "set(_probe0) == set([1, 2])")]
    assert plan[3] == [("assert", ["sorted(f(1))"], "_probe0 == [1]")]


def test_plan_binds_parameters_and_refuses_verdicts_in_probes():
    plan = sandbox._plan("def f(x): pass\n", [
        "def close(a, b):\n    return abs(a - b) < 1e-6\nassert close(f(1), 2.0)",  # a test helper: judge side
        "assert sorted(f(1), key=lambda t: t[1]) == [(1, 2)]",
    ])["plans"]
    assert plan[0] == [("both", "def close(a, b):\n    return abs(a - b) < 1e-06"),
                       ("assert", ["f(1)"], "close(_probe0, 2.0)")]
    assert plan[1] == [("assert", ["f(1)"], "sorted(_probe0, key=lambda t: t[1]) == [(1, 2)]")]
    with pytest.raises(ValueError, match="compares inside an expression that calls the program"):
        sandbox._validate_tests(["assert all(f(x) == x for x in range(3))"])


def test_shadowing_a_builtin_the_check_calls_passes_nothing(box):
    tests = ["assert all([f(1) == 3, f(2) == 5])"]
    assert box.run(F, tests).passed == 1  # all() is the judge's: it runs there
    # the program's own all() would take the comparisons into the program's process: refused there
    _hostile(box, "def all(x):\n    return True\ndef f(x):\n    return 0\n", tests=tests)


def test_decode_refuses_anything_but_builtins():
    assert sandbox._decode({"d": [[{"i": "1"}, {"t": [{"f": (0.5).hex()}, None]}]]}) == {1: (0.5, None)}
    for bad in (3, [1], {"x": 1}, {"i": 3}, {"l": [1]}, {"i": "1", "f": "0x1p0"}):
        with pytest.raises(ValueError):
            sandbox._decode(bad)


def test_tests_without_assert_are_refused(box):
    with pytest.raises(ValueError, match="no top-level `assert`"):
        box.run(F, ["f(2)"])


def test_none_isolation_is_logged_and_scores(caplog):
    with caplog.at_level(logging.WARNING, logger="grpo_jax.sandbox"):
        with Sandbox(1, isolation="none", timeout_s=2.0) as pool:
            assert pool.run(F, TESTS).status == "ok"
            assert pool.run("class E:\n    def __eq__(s, o): return True\ndef f(x): return E()\n", TESTS).passed == 0
    assert "WITHOUT namespaces" in caplog.text


def test_refuses_clearly_where_namespaces_fail(box):
    """Inside a user namespace whose max_user_namespaces is 0 the sandbox's unshare fails: Sandbox()
    raises SandboxUnavailable naming the cause, and isolation="none" still scores."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) binary to build a namespace without user namespaces")
    script = ("from grpo_jax import sandbox\ntry:\n    sandbox.Sandbox(1)\nexcept sandbox.SandboxUnavailable as e:\n"
              "    print('refused:', e)\nwith sandbox.Sandbox(1, isolation='none') as s:\n"
              "    print(s.run('def f(x): return 5', ['assert f(2) == 5']).status)\n")
    cmd = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", cmd, script], capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(sandbox.__file__)))
    if "max_user_namespaces" in done.stderr and done.returncode:
        pytest.skip(f"cannot set up the failing namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    refused, status = done.stdout.strip().splitlines()
    assert refused.startswith("refused:") and "unshare" in refused and "isolation='none'" in refused
    assert status == "ok"
    assert "WITHOUT namespaces" in done.stderr


def test_killed_trainer_leaves_no_sandbox(box):
    """SIGKILL to the trainer mid-run: the workers, their sandboxes and the programs die with it
    (parent-death signals down the chain), instead of running on to their own deadlines."""
    token = "sbx" + uuid.uuid4().hex[:10]
    script = ("import sys\nfrom grpo_jax import sandbox\nbox = sandbox.Sandbox(2, timeout_s=30)\nprint('up', flush=True)\n"
              f"box.run_many([(\"open('/proc/self/comm', 'w').write({token!r})\\nwhile True: pass\", ['assert f(1)'])] * 2)\n")
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(os.path.dirname(sandbox.__file__)))
    try:
        assert trainer.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while len(_named(token)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_named(token)) == 2
        children = psutil.Process(trainer.pid).children(recursive=True)
    finally:
        trainer.kill()
        trainer.wait()
    gone, alive = psutil.wait_procs(children, timeout=3)
    assert alive == [] and _named(token) == []


def test_run_tests_function(box):
    result = sandbox.run_tests(F, TESTS, timeout_s=2.0, memory_mb=256)
    assert (result.passed, result.total, result.status) == (3, 3, "ok")


# ---- the sandbox's own properties ------------------------------------------------------------


def test_no_capabilities_seccomp_empty_environment_fresh_pid_namespace(box):
    code = ("import os, ctypes\nstatus = open('/proc/self/status').read()\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print([l.split()[1] for l in status.splitlines() if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs'))],"
            " libc.ptrace(16, 1, 0, 0), ctypes.get_errno(), libc.unshare(0x20000), ctypes.get_errno())\n"
            "print(sorted(os.environ), os.getppid(), [p for p in os.listdir('/proc') if p.isdigit()])\n" + F)
    result = box.run(code, TESTS)
    assert result.status == "ok"
    caps, rest = result.output.splitlines()[:2]
    assert caps == "['0000000000000000', '0000000000000000', '1'] -1 1 -1 1"  # ptrace, unshare: EPERM
    # nothing of ours in the environment (CPython itself sets LC_CTYPE under the C locale, PEP 538);
    # the judge is pid 1 of a PID namespace of our own, with the program the only other process
    assert rest in ("[] 1 ['1', '2']", "['LC_CTYPE'] 1 ['1', '2']"), rest


def test_process_limit_bounds_forks(box):
    code = ("import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\n"
            "print('forked', n, flush=True)\n")
    result = _hostile(box, code, timeout_s=1.0)
    forked = int(result.output.split()[1])
    assert 1 <= forked <= 8, result.output


# ---- hostile programs (issue 27, section 2) --------------------------------------------------


def test_fork_bomb(box):
    token = "sbx" + uuid.uuid4().hex[:10]
    code = f"import os\nopen('/proc/self/comm', 'w').write({token!r})\nwhile True:\n    try: os.fork()\n    except OSError: pass\n"
    result = _hostile(box, code, timeout_s=1.0)
    assert result.status == "timeout" and result.duration_s < 4
    assert _named(token) == []


def test_memory_bomb(box):
    result = _hostile(box, "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n", memory_mb=128)
    assert result.status == "memory" and result.duration_s < 2


def test_infinite_loop(box):
    start = time.monotonic()
    result = _hostile(box, F + "while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and time.monotonic() - start < 3


def test_sleep_in_detached_child(box):
    token = "sbx" + uuid.uuid4().hex[:10]
    code = (f"import os, time\nopen('/proc/self/comm', 'w').write({token!r})\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
            "def f(x):\n    return 0\n")
    start = time.monotonic()
    _hostile(box, code)
    assert time.monotonic() - start < 1.5  # the judge ended the sleeper when the program finished
    assert _named(token) == []


def test_writes_to_home_workdir_and_package_fail(box, tmp_path):
    victim = tmp_path / "checkpoint.txt"
    victim.write_text("precious")
    home = os.path.expanduser("~")
    targets = [os.path.join(home, f"grpo_jax_sandbox_{uuid.uuid4().hex}"),
               os.path.join(os.path.dirname(sandbox.__file__), f"pwned_{uuid.uuid4().hex}.py"),
               f"/var/grpo_jax_sandbox_{uuid.uuid4().hex}"]
    code = "wrote = []\n"
    for path in [str(victim), *targets]:
        code += f"try:\n    open({path!r}, 'w').write('pwned')\n    wrote.append({path!r})\nexcept OSError:\n    pass\n"
    code += "print('wrote', wrote)\nopen('scratch.txt', 'w').write('mine')\nprint(open('scratch.txt').read())\n"
    result = _hostile(box, code)
    try:
        assert victim.read_text() == "precious"
        assert [p for p in targets if os.path.exists(p)] == []
        assert "wrote []" in result.output and "mine" in result.output  # its own directory is writable
    finally:
        for path in targets:
            if os.path.exists(path):
                os.remove(path)


def test_cannot_connect_to_localhost(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e)\n")
    try:
        result = _hostile(box, code)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert "refused" in result.output and "connected" not in result.output


@pytest.mark.parametrize("kill", ["os.kill(os.getppid(), 9)", "os.killpg(0, 9)", "os.kill(-1, 9)"])
def test_kills_reach_nothing_outside(box, kill):
    _hostile(box, f"import os\ntry:\n    {kill}\nexcept OSError:\n    pass\ndef f(x):\n    return 0\n")
    assert box.run(F, TESTS).status == "ok"  # the pool and this process are alive


def test_a_gigabyte_of_output(box):
    result = _hostile(box, "import sys\nfor _ in range(1 << 14):\n    sys.stdout.write('x' * (1 << 16))\n" + F)
    assert result.status == "crash" and "output" in result.detail
    assert len(result.output) <= 64 << 10 and result.duration_s < 2


def test_ctypes_segfault(box):
    result = _hostile(box, "import ctypes\nctypes.string_at(0)\n" + F)
    assert result.status == "crash" and "signal 11" in result.detail


def test_deep_recursion(box):
    _hostile(box, "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(x):\n    return f(x + 1)\n", timeout_s=1.0)


@pytest.mark.parametrize("leave", ["import sys\nsys.exit(0)", "import os\nos._exit(0)"])
def test_exit_before_the_tests(box, leave):
    result = _hostile(box, F + leave + "\n")  # the right function, but the tests never ran
    assert result.status == "crash"


def test_always_equal_objects(box):
    code = ("class AlwaysEqual:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
            "class EqualInt(int):\n    def __eq__(self, other): return True\n"
            "def f(x):\n    return AlwaysEqual() if x else EqualInt(7)\n")
    _hostile(box, code, tests=[*TESTS, "assert f(1)"])


def test_patching_builtins(box):
    code = ("import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n"
            "builtins.isinstance = lambda *a: True\nbuiltins.len = lambda x: 3\nbuiltins.print = lambda *a: None\n"
            "def f(x):\n    return 0\n")
    _hostile(box, code, tests=[*TESTS, "assert len(f(0) * [0]) == 3"])  # len runs in the judge: 0


def test_fake_success_marker(box):
    forged = '{"k": "v", "t": 0, "src": "f(2)", "v": {"i": "5"}}\\n{"k": "done"}'
    _hostile(box, f"print('ALL TESTS PASSED')\nprint('{forged}')\nimport sys\nsys.stderr.write('OK 3/3')\n")


def test_a_run_interrupted_by_the_callers_alarm_does_not_leak_its_score_into_the_next():
    """rewards.combine bounds each verifier with SIGALRM: an exception raised inside `Sandbox.run`
    while the worker is busy used to put the worker back with its reply unread, so the NEXT program
    got this one's score (a correct program scored 0). The interrupted worker is now replaced."""
    import signal

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm

    try:
        pool = sandbox.Sandbox(workers=1)
    except SandboxUnavailable as error:
        pytest.skip(f"no namespace sandbox on this machine: {error}")
    with pool:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Alarm):
                pool.run("import time\ndef f():\n    time.sleep(3)\n    return 0\n", ["assert f() == 1"], timeout_s=4)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        good = pool.run("def g(x):\n    return x + 1\n", ["assert g(1) == 2", "assert g(2) == 3"])
        assert (good.passed, good.total, good.status) == (2, 2, "ok")
