"""Runs untrusted programs (the model's code) against tests, inside a Linux sandbox.

    run_tests(code, tests, *, timeout_s=5.0, memory_mb=512) -> Result(passed, total, status, ...)
    Sandbox(workers=2).run_many([(code, tests), ...]) -> [Result, ...]

`tests` are Python statements in MBPP's format (`assert f(2) == 5`); every test holds at least one
`assert`. Only the standard library is importable by the program (the interpreter runs with -I -S).

Process tree (one per program)::

    trainer ── worker (plain `python sandbox.py --worker`, stdlib only, single-threaded)
                 └─ S: unshare(user, mount, net, pid, ipc, uts, cgroup); builds the file-system view
                      └─ P: pid 1 of the new PID namespace: the trusted judge (never runs program code)
                           └─ G: caps dropped, rlimits, exec of a fresh `python -I -S` that runs the
                                 program, then evaluates the tests' *probes* (below)

Guarantees and how each is obtained (namespaces mode, the default):

* No network: a new network namespace holds only a loopback that is down (connect: ENETUNREACH);
  abstract unix sockets are per network namespace too.
* Writes nowhere but its own directory: a new mount namespace in which every mount is made
  read-only and nosuid (mount_setattr(2), AT_RECURSIVE); a size-capped tmpfs on /tmp (the working
  directory) is the only writable place, and it vanishes with the namespace. /root, /home, $HOME,
  /run, /var/tmp, /mnt, /media, /srv, /sys, the trainer's working directory (where runs usually
  live) and the paths in `hide` are covered by empty read-only tmpfs (no credentials or
  checkpoints to read, no filesystem sockets to connect to; the Python installation is bound back
  if it lives under one of them); /dev holds only null, zero, full, random and urandom. The
  environment is empty.
* Identity: the user namespace maps the sandbox's uid 0 to 65534 (nobody) when the trainer is root
  (so RLIMIT_NPROC is enforced: the kernel exempts only real root, and root-owned files are not
  the sandbox's), else to the trainer's own uid (the only mapping an unprivileged user may write).
  G drops every capability before exec (bounding set, ambient, capset, SECBIT_NOROOT locked,
  no_new_privs), so it cannot remount or unmount anything, and installs a seccomp filter (x86_64,
  aarch64) that refuses ptrace, process_vm_*, bpf, perf_event_open, userfaultfd, io_uring, keyctl,
  mount/umount/pivot_root/fsopen..., unshare/setns, module and kexec calls. P and S are not
  dumpable (no ptrace or /proc/pid/mem access from G). Nested user namespaces are disabled
  (max_user_namespaces = 0 inside).
* Limits on G (setrlimit, inherited by its children): CPU seconds, address space (memory_mb),
  processes (RLIMIT_NPROC: since Linux 5.14 it is counted per (user namespace, uid), i.e. only the
  sandbox's own tasks), file size, open files, no core dumps. Wall clock: P kills every process of
  the namespace (kill(-1) from its pid 1) at the deadline, when G exits, or when output exceeds its
  cap; the worker SIGKILLs P (which takes the namespace with it) if P itself overstays. P has its
  own address-space and CPU limits for the checks it evaluates on the program's values. A killed
  trainer takes everything with it: worker, S and P carry PR_SET_PDEATHSIG (re-armed in S after
  the credential changes that clear it), and P's death ends the PID namespace.
* stdout/stderr: one pipe read by P, at most `output_bytes`; more kills the run.

Results the program cannot forge. Each test is split (ast) into *probes*, the sub-expressions that
depend on the program, e.g. `assert math.isclose(f(1), 2.5)` -> probe `f(1)`; comparisons, boolean
operators, arithmetic and calls of trusted functions (builtins, test imports) run in the judge.
G evaluates only the probes and sends their values on fd 3 (one Python literal per line, read
back with ast.literal_eval), encoded in a tagged form that admits
only exact builtin types (int, float, complex, str, bytes, bool, None, list, tuple, dict, set,
frozenset, range, dict views; builtin iterators such as generators and map objects become an
iterator over their values; no subclasses). P decodes them into genuine builtin objects and
evaluates the rest of each test itself (`_probe0 == 5`), in its own interpreter. So:
* an object whose `__eq__` is always True cannot be encoded (the test fails); the comparison
  never runs in the program's process;
* patching builtins, sys.exit/os._exit before the tests, or printing a success marker change at
  most what G *claims* a probe's value is; the program never sees the expected values (they are in
  neither G's input nor its address space: G is a fresh exec), so a claim is worth what computing
  the answer is worth. Anything missing or malformed on fd 3 fails the test.
  What this does not stop: fd 3 is reachable from the program's code (it shares G with the
  harness), so a program that already knows an expected value (e.g. the prompt shows the tests,
  as MBPP's does) can claim it there, exactly as it could hard-code `return 5`.
Trusted names are the builtins not redefined by the program and names bound by test statements
that do not touch the program (`import math`, a helper `def close(a, b)`); everything else belongs
to the program. A probe never holds a comparison or boolean operator: a test that would need one
(`assert all(f(x) == y for ...)`, where the comprehension must run beside the program) is refused
with a ValueError, and one the program turns into such (by redefining `all`) fails.

`isolation="none"` keeps the rlimits, the probe/judge split, a temporary directory and a process
group, but no namespaces: no network, file-system or PID isolation (a program can write the
trainer's files, and a child that leaves the process group survives). It logs a warning.
"""
from __future__ import annotations

import ast
import builtins
import ctypes
import dataclasses
import json
import logging
import marshal
import math
import os
import queue
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

STATUSES = ("ok", "failed", "timeout", "memory", "crash", "syntax")
ISOLATIONS = ("namespaces", "none")

_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _AT_RECURSIVE, _AT_FDCWD = 0x1, 0x2, 0x8000, -100
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the syscall tables were unified)
_HIDDEN = ("/root", "/home", "/run", "/var/tmp", "/mnt", "/media", "/srv", "/sys")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/dev", "/sys", "/tmp")
_NOBODY = 65534
_EXE = os.path.realpath(sys.executable)  # resolved before the view hides the venv's symlink
_WORKER_GRACE_S = 5.0  # the worker's own deadline over timeout_s: P normally reports long before


class SandboxUnavailable(RuntimeError):
    """Namespaces do not work here (no unprivileged user namespaces, old kernel, seccomp'd
    container). Pass `isolation="none"` to run without them, knowingly."""


@dataclasses.dataclass(frozen=True)
class Result:
    """One program's score. `tests[i]` is whether test i passed; `passed` = sum(tests).

    status: "ok" (all passed), "failed" (some failed), "timeout" (wall clock or CPU limit),
    "memory" (MemoryError: the address-space limit), "crash" (killed by a signal, exited before
    the tests finished, output over its cap, or the sandbox could not start: see `detail`),
    "syntax" (the program does not compile)."""

    passed: int
    total: int
    status: str
    tests: tuple[bool, ...] = ()
    output: str = ""
    detail: str = ""
    duration_s: float = 0.0

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


# ----------------------------------------------------------------------------------------------
# Test rewriting: split each test into the probes G evaluates and the checks P evaluates.


def _names_bound(tree: ast.AST) -> set[str]:
    """Names a program binds anywhere (a conservative superset of what shadows a builtin)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Global):
            names.update(node.names)
    return names


def _free_names(node: ast.AST, bound: frozenset = frozenset()) -> set[str]:
    """Names a test statement or expression reads from outside itself (parameters of its lambdas
    and defs, comprehension targets and a def's own locals are not free)."""
    if isinstance(node, ast.Name):
        return set() if node.id in bound or not isinstance(node.ctx, ast.Load) else {node.id}
    if isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
        outer = [*args.defaults, *(d for d in args.kw_defaults if d)]
        if isinstance(node, ast.Lambda):
            body = [node.body]
        else:
            outer += node.decorator_list
            body = node.body
            params |= _names_bound(ast.Module(body=body, type_ignores=[])) | {node.name}
        free = set().union(*(_free_names(n, bound) for n in outer)) if outer else set()
        return free | set().union(*(_free_names(n, bound | params) for n in body))
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        inner = bound | targets
        free = _free_names(node.generators[0].iter, bound)
        parts = [*(g.iter for g in node.generators[1:]), *(c for g in node.generators for c in g.ifs)]
        parts += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        return free | set().union(*(_free_names(n, inner) for n in parts))
    return set().union(set(), *(_free_names(c, bound) for c in ast.iter_child_nodes(node)))


_VERDICTS = (ast.Compare, ast.BoolOp)


class _Splitter:
    """Replaces the program-dependent sub-expressions of a test with `_probeN` names."""

    def __init__(self, trusted: set[str]):
        self.trusted = trusted
        self.probes: list[str] = []
        self.verdict_in_probe = False  # a comparison would run in the program's process: never trusted

    def tainted(self, node: ast.AST) -> bool:
        return any(name not in self.trusted for name in _free_names(node))

    def probe(self, node: ast.expr) -> ast.expr:
        if any(isinstance(n, _VERDICTS) for n in ast.walk(node)):
            self.verdict_in_probe = True
        self.probes.append(ast.unparse(node))
        return ast.Name(id=f"_probe{len(self.probes) - 1}", ctx=ast.Load())

    def split(self, node: ast.expr) -> ast.expr:
        if not self.tainted(node):
            return node
        if isinstance(node, ast.Compare):  # the comparison itself always runs in the judge
            return ast.Compare(self.split(node.left), node.ops, [self.split(c) for c in node.comparators])
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(node.op, [self.split(v) for v in node.values])
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(node.op, self.split(node.operand))
        if isinstance(node, ast.BinOp):
            return ast.BinOp(self.split(node.left), node.op, self.split(node.right))
        if isinstance(node, ast.Set):
            return ast.Set(elts=[self.split(e) for e in node.elts])
        if isinstance(node, (ast.Tuple, ast.List)):
            return type(node)(elts=[self.split(e) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Call) and not self.tainted(node.func):  # len(f(x)): len runs in the judge
            return ast.Call(self.split(node.func), [self.split(a) for a in node.args],
                            [ast.keyword(k.arg, self.split(k.value)) for k in node.keywords])
        return self.probe(node)


def _plan(code: str, tests: Sequence[str]) -> dict[str, Any]:
    """The probes G runs and the checks P runs, per test. Runs in P (the program is untrusted
    source, so even parsing it happens inside the sandbox).

    Each test becomes a list of steps: ("both", src) untainted statements such as imports, run in
    G and P; ("g", src) statements that touch the program, run in G only (their targets become
    program names); ("assert", [probe sources], check source) evaluated split.
    """
    try:
        shadowed = _names_bound(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        shadowed = set()
    trusted = set(dir(builtins)) - shadowed
    plans = []
    for test in tests:
        steps = []
        for stmt in ast.parse(test).body:
            if isinstance(stmt, ast.Assert):
                splitter = _Splitter(trusted)
                check = splitter.split(stmt.test)
                # a probe holding a comparison (`all(f(x) == x for x in ...)`, or the program shadows
                # a builtin the check calls) would be a verdict computed by the program: check fails
                steps.append(("assert", splitter.probes,
                              "False" if splitter.verdict_in_probe else ast.unparse(ast.fix_missing_locations(check))))
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)) or not _Splitter(trusted).tainted(stmt):
                steps.append(("both", ast.unparse(stmt)))
                trusted |= _names_bound(stmt)
            else:
                steps.append(("g", ast.unparse(stmt)))
                trusted -= _names_bound(stmt)
        plans.append(steps)
    return {"code": code, "tests": [[s[:2] for s in steps] for steps in plans], "plans": plans}


def _validate_tests(tests: Sequence[str]) -> list[str]:
    tests = list(tests)
    for i, test in enumerate(tests):
        if not isinstance(test, str):
            raise TypeError(f"tests[{i}] must be a str of Python statements, got {type(test).__name__}")
        try:
            tree = ast.parse(test)
        except SyntaxError as error:
            raise ValueError(f"tests[{i}] is not valid Python ({error.msg}): {test!r}") from None
        if not any(isinstance(n, ast.Assert) for n in tree.body):
            raise ValueError(f"tests[{i}] has no top-level `assert` (nothing to check): {test!r}")
    for i, steps in enumerate(_plan("", tests)["plans"]):
        if any(step[0] == "assert" and step[2] == "False" for step in steps):
            raise ValueError(
                f"tests[{i}] compares inside an expression that calls the program (a comprehension or "
                f"lambda: the comparison would run in the program's process, where it can be faked); "
                f"write one `assert f(...) == ...` per case: {tests[i]!r}")
    return tests


# ----------------------------------------------------------------------------------------------
# The value codec: G encodes (untrusted side, inside the harness), P decodes (trusted side).

_HARNESS = r'''# grpo_jax sandbox harness
import marshal, os, sys
_type, _repr, _len, _isinstance, _list, _str, _exec, _eval = type, repr, len, isinstance, list, str, exec, eval
_out = os.fdopen(3, "w")
_exit = os._exit
def _quit():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(0)
def _send(record):
    _out.write(_repr(record) + "\n"); _out.flush()
_keys, _items = _type({}.keys()), _type({}.items())
_iterators = (_type({}.values()), *(_type(x) for x in (
    iter([]), iter(()), iter(""), iter(b""), iter(set()), iter({}), iter(range(0)), iter(range(1 << 64)),
    (i for i in ()), map(id, ()), filter(None, ()), zip(), enumerate(()), reversed([]), reversed(range(0)),
    iter({}.values()), iter({}.items()))))
def _enc(v, depth=0):
    if depth > 64: raise ValueError("nested too deep")
    t = _type(v)
    if v is None or t is bool or t is str: return v
    if t is int: return {"i": _str(v)}
    if t is float: return {"f": v.hex()}
    if t is complex: return {"c": [v.real.hex(), v.imag.hex()]}
    if t is bytes: return {"b": v.hex()}
    if t is list or t is tuple or t is set or t is frozenset:
        return {{list: "l", tuple: "t", set: "s", frozenset: "z"}[t]: [_enc(x, depth + 1) for x in v]}
    if t is dict: return {"d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if t is range: return {"r": [_str(v.start), _str(v.stop), _str(v.step)]}
    if t is _keys: return {"dk": [_enc(x, depth + 1) for x in v]}
    if t is _items: return {"di": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v]}
    if t in _iterators: return {"it": [_enc(x, depth + 1) for x in v]}
    raise TypeError("a probe's value must be of an exact builtin type, not " + t.__name__)
job = marshal.loads(sys.stdin.buffer.read())
try:
    program = compile(job["code"], "<program>", "exec")
except (SyntaxError, ValueError, OverflowError, RecursionError) as e:
    _send({"k": "syntax", "msg": _type(e).__name__ + ": " + _str(e)[:300]}); _quit()
ns = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    _exec(program, ns)
except MemoryError:
    _send({"k": "memory"}); _quit()
except BaseException as e:
    _send({"k": "program_error", "msg": _type(e).__name__}); _quit()
for i, steps in enumerate(job["tests"]):
    try:
        for step in steps:
            if step[0] == "assert":
                for j, src in enumerate(step[1]):
                    _send({"k": "v", "t": i, "src": src, "v": _enc(_eval(src, ns))})
            else:
                _exec(step[1], ns)
    except MemoryError:
        _send({"k": "memory"})
    except BaseException as e:
        _send({"k": "err", "t": i, "msg": _type(e).__name__})
_send({"k": "done"})
_quit()
'''


def _decode(x: Any, depth: int = 0) -> Any:
    """The tagged form -> a genuine builtin value; ValueError/TypeError on anything else."""
    if depth > 64:
        raise ValueError("nested too deep")
    if x is None or type(x) in (bool, str):
        return x
    if type(x) is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "i" and type(v) is str:
        return int(v)
    if tag == "f" and type(v) is str:
        return float.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b" and type(v) is str:
        return bytes.fromhex(v)
    if tag in ("l", "t", "s", "z") and type(v) is list:
        items = [_decode(e, depth + 1) for e in v]
        return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
    if tag == "r" and type(v) is list and len(v) == 3 and all(type(e) is str for e in v):
        return range(*map(int, v))
    if tag == "dk" and type(v) is list:
        return dict.fromkeys(_decode(e, depth + 1) for e in v).keys()
    if tag == "di" and type(v) is list:
        return {_decode(k, depth + 1): _decode(e, depth + 1) for k, e in (_pair(p) for p in v)}.items()
    if tag == "it" and type(v) is list:  # generators, map, zip, ... and dict values: an iterator of the values
        return iter([_decode(e, depth + 1) for e in v])
    if tag == "d" and type(v) is list:
        return {_decode(k, depth + 1): _decode(e, depth + 1) for k, e in (_pair(p) for p in v)}
    raise ValueError("malformed value")


def _pair(p: Any) -> tuple[Any, Any]:
    if type(p) is not list or len(p) != 2:
        raise ValueError("malformed dict item")
    return p[0], p[1]


# ----------------------------------------------------------------------------------------------
# Inside the sandbox: S (namespaces + mounts), P (judge, pid 1), G (the program).

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _read_only_tree() -> None:
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)), "mount_setattr(/, AT_RECURSIVE, RDONLY)")


def _python_dirs() -> list[str]:
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    dirs.add(os.path.dirname(os.path.dirname(_EXE)))
    return sorted(d for d in dirs if d != "/")


def _hidden_dirs(extra: Sequence[str]) -> list[str]:
    """Directories covered by an empty read-only tmpfs: the fixed list, $HOME, the caller's
    working directory (the run's workdir is usually below it) and `extra`; never a system dir."""
    out = set()
    for d in (*_HIDDEN, os.path.expanduser("~"), *extra):
        d = os.path.realpath(d) if d else "/"
        system = any(d == s or d.startswith(s + "/") for s in _SYSTEM)
        if d != "/" and (d in _HIDDEN or not system) and os.path.isdir(d):
            out.add(d)
    return sorted(out, key=len)  # parents first: a child hidden under a hidden parent is skipped


def _build_view(job: dict[str, Any]) -> None:
    """In S, after unshare and the id maps: the file-system view described in the docstring."""
    hidden = _hidden_dirs(job["hide"])
    # O_PATH handles opened while S still has the trainer's file access (uid 0 may traverse /root)
    keep = {d: os.open(d, os.O_PATH | os.O_DIRECTORY) for d in _python_dirs()}
    devices = {name: os.open(f"/dev/{name}", os.O_PATH) for name in _DEVICES if os.path.exists(f"/dev/{name}")}
    _drop_to_ns_root()
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    covered: list[str] = []
    for d in hidden:
        if not any(d.startswith(c + "/") for c in covered):
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
            covered.append(d)
    for d, fd in keep.items():
        if any(d == c or d.startswith(c + "/") for c in covered):
            os.makedirs(d, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", d, None, _MS_BIND | _MS_REC)
        os.close(fd)
    _mount("tmpfs", "/dev", "tmpfs", _MS_NOSUID, "size=64k,mode=0755")  # a minimal /dev
    for name, fd in devices.items():
        open(f"/dev/{name}", "w").close()
        _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, _MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    _read_only_tree()
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={job['tmp_mb']}m,mode=0700")


def _drop_to_ns_root() -> None:
    os.setresgid(0, 0, 0)
    if os.geteuid() == 0 and _read("/proc/self/setgroups").strip() == "allow":
        os.setgroups([])
    os.setresuid(0, 0, 0)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _drop_capabilities() -> None:
    """G, before exec: no capability now or after exec (bounding set empty, SECBIT_NOROOT locked)."""
    prctl = _libc.prctl
    prctl(28, 239, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE, all locked
    last = int(_read("/proc/sys/kernel/cap_last_cap") or 40)
    for cap in range(last + 1):
        prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")
    _check(prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


# seccomp: system calls G gets EPERM for (defence in depth behind the namespaces and the dropped
# capabilities: the kernel interfaces most exploits start from, and everything that changes mounts
# or namespaces). Numbers per architecture; elsewhere no filter is installed (logged in `detail`).
_DENIED_SYSCALLS = {
    # (AUDIT_ARCH, x32 bit to refuse or 0): {name: number}
    "x86_64": (0xC000003E, 0x40000000, dict(
        ptrace=101, process_vm_readv=310, process_vm_writev=311, keyctl=250, add_key=248, request_key=249,
        bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, mount=165, umount2=166, unshare=272, setns=308, pivot_root=155, chroot=161,
        kexec_load=246, init_module=175, finit_module=313, delete_module=176, acct=163, swapon=167,
        swapoff=168, reboot=169, open_by_handle_at=304, name_to_handle_at=303, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, clone3=435, personality=135)),
    "aarch64": (0xC00000B7, 0, dict(
        ptrace=117, process_vm_readv=270, process_vm_writev=271, keyctl=219, add_key=217, request_key=218,
        bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, mount=40, umount2=39, unshare=97, setns=268, pivot_root=41, chroot=51,
        kexec_load=104, init_module=105, finit_module=273, delete_module=106, acct=89, swapon=224,
        swapoff=225, reboot=142, open_by_handle_at=265, name_to_handle_at=264, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, clone3=435, personality=92)),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp() -> bool:
    """G, after no_new_privs: a classic-BPF filter; ENOSYS for clone3 (so libc falls back to clone,
    whose flags the filter could see), EPERM for the rest of the list; other architectures or
    ABIs than the one listed are killed. False where the architecture has no table."""
    table = _DENIED_SYSCALLS.get(os.uname().machine)
    if table is None:
        return False
    arch, x32, numbers = table
    ld_w_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    errno_ret = lambda err: 0x00050000 | err
    prog = [(ld_w_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, 0x80000000), (ld_w_abs, 0, 0, 0)]
    denied = sorted(n for name, n in numbers.items() if name != "clone3")
    checks = ([(jge, "eperm", 0, x32)] if x32 else []) + [(jeq, "enosys", 0, numbers["clone3"])] + [
        (jeq, "eperm", 0, n) for n in denied]
    tail = [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, errno_ret(1)), (ret, 0, 0, errno_ret(38))]  # allow, EPERM, ENOSYS
    start = len(prog)
    n_checks = len(checks)
    for i, (code, target, jf, k) in enumerate(checks):
        here = start + i
        dest = start + n_checks + (1 if target == "eperm" else 2)
        prog.append((code, dest - here - 1, jf, k))
    prog += tail
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _check(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "PR_SET_SECCOMP")  # SECCOMP_MODE_FILTER
    return True


def _set_limits(job: dict[str, Any], isolated: bool) -> None:
    cpu = max(1, math.ceil(job["timeout_s"]))
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_AS: (job["memory_mb"] << 20,) * 2,
        resource.RLIMIT_FSIZE: (job["tmp_mb"] << 20,) * 2,
        resource.RLIMIT_NOFILE: (64, 64),
        resource.RLIMIT_CORE: (0, 0),
    }
    if isolated:  # without a user namespace NPROC would count all of the trainer's processes
        limits[resource.RLIMIT_NPROC] = (job["max_processes"] + 2,) * 2  # + S and P, same uid
    for which, value in limits.items():
        resource.setrlimit(which, value)


def _kill_rest(isolated: bool, g_pid: int) -> None:
    try:
        if isolated:
            os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the namespace
        else:
            os.killpg(g_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _judge(job: dict[str, Any], result_fd: int, isolated: bool) -> None:
    """P: starts G, watches it, evaluates the checks, writes the Result as JSON to result_fd."""
    _libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: G (same uid) may not ptrace us
    if isolated:
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        try:
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
        except OSError:
            pass
    # P evaluates the checks on values the program chose (`[0] * f(x)`): bounded like G, plus room
    # for the interpreter it inherited; G lowers both for itself
    resource.setrlimit(resource.RLIMIT_AS, ((job["memory_mb"] + 256) << 20,) * 2)
    cpu = math.ceil(job["timeout_s"]) + 10
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    start = time.monotonic()
    plan = _plan(job["code"], job["tests"])
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    probe_r, probe_w = os.pipe()
    g = os.fork()
    if g == 0:
        try:
            for src, dst in ((in_r, 0), (out_w, 1), (out_w, 2), (probe_w, 3)):
                os.dup2(src, dst)
            os.closerange(4, 1 << 16)
            os.setsid()
            os.chdir(job["cwd"])
            _set_limits(job, isolated)
            if isolated:
                _drop_capabilities()
                _install_seccomp()
            os.execve(_EXE, [_EXE, "-I", "-S", "-c", _HARNESS], {})
        except BaseException as error:
            os.write(2, f"sandbox: cannot start the program: {error!r}\n".encode())
        finally:
            os._exit(127)
    for fd in (in_r, out_w, probe_w):
        os.close(fd)
    try:
        os.write(in_w, marshal.dumps({"code": plan["code"], "tests": plan["tests"]}))  # trusted -> G
    except OSError:
        pass
    os.close(in_w)
    deadline = start + job["timeout_s"]
    output, probes = bytearray(), bytearray()
    reason, status_hint = "", None
    g_fd = os.pidfd_open(g)
    open_fds = {out_r: output, probe_r: probes}
    g_status, g_cpu = None, 0.0
    while g_status is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status_hint, reason = "timeout", f"wall clock {job['timeout_s']} s"
            break
        ready, _, _ = select.select([*open_fds, g_fd], [], [], remaining)
        for fd in ready:
            if fd == g_fd:
                _, g_status, usage = os.wait4(g, 0)
                g_cpu = usage.ru_utime + usage.ru_stime
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                del open_fds[fd]
                continue
            open_fds[fd] += chunk
        if len(output) > job["output_bytes"]:
            status_hint, reason = "crash", f"output over {job['output_bytes']} bytes"
            break
        if len(probes) > job["probe_bytes"]:
            status_hint, reason = "crash", f"probe values over {job['probe_bytes']} bytes"
            break
    _kill_rest(isolated, g)
    if g_status is None:
        _, g_status, usage = os.wait4(g, 0)
        g_cpu = usage.ru_utime + usage.ru_stime
    os.close(g_fd)
    while isolated:  # reap every process of the namespace (orphans come to us, pid 1): then no writer is left
        _kill_rest(isolated, g)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    for fd, buf in list(open_fds.items()):  # every writer is dead now: drain to EOF, within the caps
        os.set_blocking(fd, False)
        try:
            while len(buf) <= max(job["output_bytes"], job["probe_bytes"]):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
        except BlockingIOError:
            pass
    duration = time.monotonic() - start
    if status_hint is None and g_cpu >= max(1, math.ceil(job["timeout_s"])) - 0.05:
        status_hint, reason = "timeout", f"CPU limit ({g_cpu:.2f} s)"
    result = _score(plan, bytes(probes[: job["probe_bytes"]]), g_status, status_hint, reason)
    result.update(output=bytes(output[: job["output_bytes"]]).decode("utf-8", "replace"), duration_s=duration)
    data = json.dumps(result).encode()
    os.write(result_fd, struct.pack("<Q", len(data)) + data)


def _score(plan: dict[str, Any], probe_bytes: bytes, g_status: int, status_hint: str | None,
           reason: str) -> dict[str, Any]:
    """P: the per-test verdicts from the decoded probe values and the checks."""
    values: dict[int, list[tuple[str, Any]]] = {}
    errors: set[int] = set()
    done = syntax = memory = False
    detail = reason
    for line in probe_bytes.split(b"\n"):
        try:  # literals only: nothing the program wrote here can run code in the judge
            rec = ast.literal_eval(line.decode("utf-8"))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
            continue
        if type(rec) is not dict:
            continue
        kind = rec.get("k")
        if kind == "v" and type(rec.get("t")) is int:
            try:
                values.setdefault(rec["t"], []).append((rec.get("src"), _decode(rec.get("v"))))
            except (ValueError, TypeError, RecursionError, OverflowError):
                errors.add(rec["t"])
        elif kind == "err" and type(rec.get("t")) is int:
            errors.add(rec["t"])
        elif kind == "done":
            done = True
        elif kind == "syntax":
            syntax, detail = True, str(rec.get("msg", ""))[:300]
        elif kind == "memory":
            memory = True
        elif kind == "program_error" and not detail:
            detail = f"the program raised {str(rec.get('msg'))[:100]} before the tests"
    scope: dict[str, Any] = {"__builtins__": builtins}
    verdicts = []
    for i, steps in enumerate(plan["plans"]):
        got = values.get(i, [])
        ok = i not in errors
        k = 0
        for step in steps:
            if not ok:
                break
            try:
                if step[0] == "both":
                    exec(step[1], scope)
                elif step[0] == "assert":
                    n = len(step[1])
                    if [src for src, _ in got[k: k + n]] != step[1]:
                        ok = False
                        break
                    local = {f"_probe{j}": v for j, (_, v) in enumerate(got[k: k + n])}
                    k += n
                    ok = bool(eval(step[2], scope, local))
            except Exception:
                ok = False
        verdicts.append(ok)
    passed = sum(verdicts)
    signaled = os.WIFSIGNALED(g_status)
    if syntax:
        status = "syntax"
    elif status_hint:
        status = status_hint
    elif signaled and os.WTERMSIG(g_status) == signal.SIGXCPU:
        status, detail = "timeout", detail or "CPU limit (SIGXCPU)"
    elif memory:
        status, detail = "memory", detail or "MemoryError (address-space limit)"
    elif signaled:
        status, detail = "crash", detail or f"killed by signal {os.WTERMSIG(g_status)}"
    elif not done:
        status, detail = "crash", detail or "the program exited before the tests finished"
    else:
        status = "ok" if passed == len(verdicts) else "failed"
    if status in ("syntax",):
        verdicts, passed = [False] * len(verdicts), 0
    return {"passed": passed, "total": len(verdicts), "status": status, "tests": verdicts, "detail": detail}


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: SIGKILL when the parent dies (trainer -> worker -> S -> P), so a killed
    trainer leaves no sandbox behind; the check after closes the race with a parent already gone."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _sandbox_child(job: dict[str, Any], result_fd: int, to_worker: int, from_worker: int) -> None:
    """S: enter the namespaces, wait for the worker to write the id maps, build the view, fork P."""
    worker = os.getppid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the worker's protocol pipes: nothing below may write to them
        os.dup2(null, fd)
    isolated = job["isolation"] == "namespaces"
    if isolated:
        flags = (_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
                 | _CLONE_NEWUTS | _CLONE_NEWCGROUP)
        try:
            _check(_libc.unshare(flags), "unshare(user, mount, net, pid, ipc, uts, cgroup)")
        except OSError as error:
            os.write(to_worker, b"E" + str(error).encode()[:500])
            return
        os.write(to_worker, b"U")
        if os.read(from_worker, 1) != b"G":
            return
        try:
            _build_view(job)
        except OSError as error:
            os.write(to_worker, b"E" + str(error).encode()[:500])
            return
        _libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        _die_with_parent(worker)  # again: the kernel clears it when unshare/setresuid change our credentials
        job = {**job, "cwd": "/tmp"}
    s = os.getpid()
    p = os.fork()
    if p == 0:
        try:
            if not isolated:  # pid 1 of a namespace sees its parent as 0: it dies with S below instead
                _die_with_parent(s)
            else:
                _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
            _judge(job, result_fd, isolated)
        finally:
            os._exit(0)
    os.write(to_worker, b"P" + struct.pack("<q", p))
    os.waitpid(p, 0)


def _write_id_maps(pid: int) -> None:
    """The worker writes S's maps: root maps the sandbox's 0 to nobody, others to themselves."""
    uid, gid = (_NOBODY, _NOBODY) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    if os.geteuid() != 0:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} 1\n")


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """The worker: one program through S -> P -> G; never raises for the program's sake."""
    start = time.monotonic()
    res_r, res_w = os.pipe()
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    tmpdir = None
    if job["isolation"] == "none":
        tmpdir = tempfile.mkdtemp(prefix="grpo_jax_sandbox_")
        job = {**job, "cwd": tmpdir}
    worker = os.getpid()
    s = os.fork()
    if s == 0:
        try:
            _die_with_parent(worker)
            for fd in (res_r, up_r, down_w):
                os.close(fd)
            _sandbox_child(job, res_w, up_w, down_r)
        finally:
            os._exit(0)
    for fd in (res_w, up_w, down_r):
        os.close(fd)
    p = None
    error = ""
    deadline = start + job["timeout_s"] + _WORKER_GRACE_S
    data = b""
    try:
        while True:  # the handshake: U (maps please), P<pid>, or E<error>
            msg = _read_until(up_r, deadline)
            if msg.startswith(b"U"):
                _write_id_maps(s)
                os.write(down_w, b"G")
                msg = msg[1:] or _read_until(up_r, deadline)
            if msg.startswith(b"E"):
                error = msg[1:].decode(errors="replace")
                break
            if msg.startswith(b"P") and len(msg) >= 9:
                p = struct.unpack("<q", msg[1:9])[0]
                break
            if not msg:
                error = "the sandbox process died during set-up"
                break
        if p is not None:
            data = _read_result(res_r, deadline)
    except (OSError, TimeoutError) as exc:
        error = error or f"sandbox set-up: {exc}"
    finally:
        if not data:  # P overstayed (or set-up failed): SIGKILL to P ends its whole PID namespace
            for pid in (p, s):
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        try:
            os.waitpid(s, 0)
        except ChildProcessError:
            pass
        for fd in (res_r, up_r, down_w):
            os.close(fd)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if data:
        out = json.loads(data)
    else:
        total = len(job["tests"])
        out = {"passed": 0, "total": total, "status": "timeout" if p is not None and not error else "crash",
               "tests": [False] * total, "detail": error or "the judge did not report in time"}
        if error:
            out["isolation_error"] = error
    out["duration_s"] = time.monotonic() - start
    return out


def _read_until(fd: int, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise TimeoutError("sandbox handshake")
    return os.read(fd, 4096)


def _read_result(fd: int, deadline: float) -> bytes:
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b""
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        buf += chunk
        if len(buf) >= 8 and len(buf) >= 8 + struct.unpack("<Q", buf[:8])[0]:
            break
    if len(buf) < 8 or len(buf) < 8 + struct.unpack("<Q", buf[:8])[0]:
        return b""
    return buf[8: 8 + struct.unpack("<Q", buf[:8])[0]]


def _worker_main() -> None:
    """`python -I -S sandbox.py --worker`: length-prefixed JSON jobs on stdin, results on stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    _die_with_parent(int(os.environ.get("_GRPO_JAX_SANDBOX_PARENT", os.getppid())))
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        job = json.loads(stdin.read(struct.unpack("<Q", head)[0]))
        try:
            out = _run_job(job)
        except Exception as exc:  # a bug of ours: report it, keep serving
            out = {"passed": 0, "total": len(job["tests"]), "status": "crash", "tests": [False] * len(job["tests"]),
                   "detail": f"sandbox worker error: {type(exc).__name__}: {exc}"}
        data = json.dumps(out).encode()
        stdout.write(struct.pack("<Q", len(data)) + data)
        stdout.flush()


# ----------------------------------------------------------------------------------------------
# The trainer side: a pool of workers.


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            env={"_GRPO_JAX_SANDBOX_PARENT": str(os.getpid())})

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(job).encode()
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) < 8:
            raise RuntimeError(f"sandbox worker exited (code {self.proc.poll()})")
        return json.loads(self.proc.stdout.read(struct.unpack("<Q", head)[0]))

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class Sandbox:
    """A pool of `workers` pre-started worker processes; each scores one program at a time in a
    fresh sandbox (fork + unshare: no interpreter start in the worker's path; G execs one).

    isolation: "namespaces" (default; SandboxUnavailable if they do not work here) or "none"
    (rlimits and process group only, logged as a warning). The keyword arguments are the defaults
    of every run (`run`, `run_many` items may override them): timeout_s (wall clock of the program
    and its tests; CPU limit ceil(timeout_s) s), memory_mb (address space), max_processes
    (processes and threads, RLIMIT_NPROC), output_bytes (stdout + stderr kept; more kills the run),
    tmp_mb (the writable /tmp and the file-size limit), probe_bytes (the values channel), hide
    (more directories to cover, e.g. a run's workdir outside the current directory).
    The constructor scores one trivial program to check that the sandbox works here.
    """

    def __init__(self, workers: int = 2, *, isolation: str = "namespaces", timeout_s: float = 5.0,
                 memory_mb: int = 512, max_processes: int = 16, output_bytes: int = 64 << 10,
                 tmp_mb: int = 16, probe_bytes: int = 1 << 20, hide: Sequence[str] = ()):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if sys.platform != "linux":
            raise SandboxUnavailable("the sandbox needs Linux (namespaces, rlimits, pidfd)")
        self.isolation = isolation
        self.hide = [os.path.abspath(p) for p in (os.getcwd(), *hide)]
        self.defaults = dict(timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes,
                             output_bytes=output_bytes, tmp_mb=tmp_mb, probe_bytes=probe_bytes)
        if isolation == "none":
            log.warning("sandbox isolation='none': programs run WITHOUT namespaces (they can reach the "
                        "network and write the trainer's files); rlimits and a process group only")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker() for _ in range(workers)]
        for worker in self._workers:
            self._idle.put(worker)
        probe = self.run("def _sandbox_check():\n    return 1\n", ["assert _sandbox_check() == 1"])
        if probe.status != "ok":
            self.close()
            raise SandboxUnavailable(
                f"the sandbox does not work here ({probe.detail or probe.status}"
                f"{'; output: ' + probe.output.strip()[-300:] if probe.output.strip() else ''}). It needs unprivileged "
                "user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; "
                "on Ubuntu >= 23.10 also kernel.apparmor_restrict_unprivileged_userns=0) and Linux >= 5.12 "
                "(mount_setattr). isolation='none' runs without them, at the trainer's risk.")

    def _job(self, code: str, tests: Sequence[str], **overrides: Any) -> dict[str, Any]:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        job = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(job) - set(self.defaults)
        if unknown:
            raise TypeError(f"unknown sandbox options {sorted(unknown)}")
        if job["timeout_s"] <= 0 or job["memory_mb"] < 32:
            raise ValueError(f"timeout_s must be > 0 and memory_mb >= 32, got {job['timeout_s']}, {job['memory_mb']}")
        return {**job, "code": code, "tests": _validate_tests(tests), "isolation": self.isolation, "cwd": "",
                "hide": self.hide}

    def run(self, code: str, tests: Sequence[str], **options: Any) -> Result:
        """One program; options override the pool's defaults (timeout_s, memory_mb, ...)."""
        job = self._job(code, tests, **options)
        worker = self._idle.get()
        try:
            out = worker.run(job)
        except (OSError, RuntimeError) as exc:  # the worker died (it should not): replace it
            worker.close()
            self._workers.remove(worker)
            worker = _Worker()
            self._workers.append(worker)
            out = {"passed": 0, "total": len(job["tests"]), "status": "crash", "tests": [False] * len(job["tests"]),
                   "detail": f"sandbox worker lost: {exc}"}
        except BaseException:
            # Interrupted mid-run (a caller's timeout alarm, KeyboardInterrupt): the worker's reply is
            # still unread, and handing it to the next caller would give that caller this program's
            # score. Kill it (its sandbox dies with it: parent-death signals) and start a fresh one.
            worker.proc.kill()
            worker.proc.wait()
            self._workers.remove(worker)
            worker = _Worker()
            self._workers.append(worker)
            raise
        finally:
            self._idle.put(worker)
        return Result(passed=out["passed"], total=out["total"], status=out["status"], tests=tuple(out["tests"]),
                      output=out.get("output", ""), detail=out.get("detail", ""),
                      duration_s=out.get("duration_s", 0.0))

    def run_many(self, items: Iterable[tuple[str, Sequence[str]] | dict[str, Any]]) -> list[Result]:
        """Scores a batch in parallel over the workers. Items: (code, tests) or dicts with
        code, tests and any option. Results in the order of the items."""
        items = list(items)
        results: list[Result | None] = [None] * len(items)
        errors: list[BaseException] = []
        order: queue.Queue[int] = queue.Queue()
        for i in range(len(items)):
            order.put(i)

        def drain():
            while True:
                try:
                    i = order.get_nowait()
                except queue.Empty:
                    return
                item = items[i]
                try:
                    results[i] = self.run(**item) if isinstance(item, dict) else self.run(*item)
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=drain, daemon=True) for _ in range(min(len(self._workers), len(items)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_default: dict[str, Sandbox] = {}
_default_lock = threading.Lock()


def run_tests(code: str, tests: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
              isolation: str = "namespaces") -> Result:
    """Runs `code` then `tests` (MBPP-style `assert` statements) in the sandbox; see the module
    docstring. A one-worker pool is started on first use and kept for later calls."""
    with _default_lock:
        if isolation not in _default:
            import atexit

            _default[isolation] = Sandbox(1, isolation=isolation)
            atexit.register(_default[isolation].close)
        sandbox = _default[isolation]
    return sandbox.run(code, tests, timeout_s=timeout_s, memory_mb=memory_mb)


def _bench(n: int, workers: int) -> None:
    """`python -m grpo_jax.sandbox --bench [N] [WORKERS]`: programs per second scoring N small
    MBPP-like programs (3 tests each), cold (pool start + first program) and warm; against the
    same programs without namespaces (isolation="none"), as a plain `python -I -S -c` subprocess
    each (the usual unsandboxed runner), and exec'd in this process (no isolation at all)."""
    from concurrent.futures import ThreadPoolExecutor

    code = "def f(x):\n    return sorted(set(x))[::-1][:3]\n"
    tests = ["assert f([3, 1, 2, 3]) == [3, 2, 1]", "assert f([]) == []", "assert f([5, 5]) == [5]"]
    items = [(code + f"# {i}\n", tests) for i in range(n)]

    def rate(fn) -> float:
        start = time.perf_counter()
        fn()
        return n / (time.perf_counter() - start)

    start = time.perf_counter()
    pool = Sandbox(workers)
    pool.run(*items[0])
    cold = time.perf_counter() - start
    warm = rate(lambda: pool.run_many(items))
    assert all(r.status == "ok" for r in pool.run_many(items[:4]))
    pool.close()
    with Sandbox(workers, isolation="none") as plain:
        none = rate(lambda: plain.run_many(items))

    def subprocess_one(item):
        return subprocess.run([_EXE, "-I", "-S", "-c", item[0] + "\n".join(item[1])], capture_output=True,
                              timeout=10).returncode

    with ThreadPoolExecutor(workers) as ex:
        sub = rate(lambda: list(ex.map(subprocess_one, items)))
    in_process = rate(lambda: [exec(c + "\n".join(t), {}) for c, t in items])
    print(f"RESULT bench=sandbox n={n} workers={workers} cold_first_s={cold:.3f} warm_programs_per_s={warm:.1f} "
          f"no_namespaces_programs_per_s={none:.1f} subprocess_programs_per_s={sub:.1f} "
          f"in_process_programs_per_s={in_process:.0f} overhead_vs_subprocess={sub / warm:.2f}x")


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
elif __name__ == "__main__" and sys.argv[1:2] == ["--bench"]:
    logging.basicConfig(level=logging.ERROR)
    _bench(int(sys.argv[2]) if len(sys.argv) > 2 else 200, int(sys.argv[3]) if len(sys.argv) > 3 else 2)
