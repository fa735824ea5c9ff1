"""The kernel library's cache, made safe: verified before mapping, built in a child process.

Used by :mod:`tda.engine.kernel_build`:

- :func:`prepare_root` creates the cache folder private to this user (0700: a library planted
  by someone else under the predictable path is never mapped) and removes the temporary build
  folders of killed builds, with a line saying what was freed;
- :func:`check_library` compares the library with the SHA-256 recorded beside it when it was
  built (a truncated, garbled or empty ``.so`` would crash the process that maps it: "Bus error",
  a segfault); a damaged one is removed with a line, and the caller rebuilds it. A library with
  no recorded hash (built by an older version) is first mapped in a short-lived child process
  (:func:`probe`): recorded when it loads there, rebuilt when it does not;
- :func:`compile_in_child` compiles and loads the library in a short-lived child process (its
  own process group, ended with its parent: an interrupted or killed parent leaves no compiler
  behind). The child mapping the library is the probe: only a library that loaded there is
  hashed, renamed into place and loaded by this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tda.common import integrity, signals, stale
from tda.common import progress as report

_TMP_MARK = ".tmp-"


def prepare_root(root: Path) -> None:
    """Create ``root`` (0700) and remove stale ``*.tmp-PID`` build folders of dead processes."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        if root.stat().st_uid == os.getuid() and (root.stat().st_mode & 0o077):
            os.chmod(root, 0o700)
    except OSError:
        pass
    stale.sweep(root, f"*{_TMP_MARK}*", r"\.tmp-(\d+)$", "left by a kernel build that was killed")


def check_library(lib: Path) -> bool:
    """True when ``lib`` exists and matches its recorded hash; a damaged one is removed (with
    a line saying why) so that the caller rebuilds it. False when there is nothing to load."""
    if not lib.exists():
        return False
    problem = integrity.check_sidecar(lib)
    if problem is None:
        return True
    if problem == "has no recorded content hash":  # built by an older version: probe it once
        problem = probe(lib)
        if problem is None:
            integrity.write_sidecar(lib)
            report.note(f"checked the cached kernel library {lib} in a separate process (once)")
            return True
    report.note(f"the cached kernel library {lib} is unusable ({problem}); rebuilding it")
    shutil.rmtree(lib.parent, ignore_errors=True)
    return False


def probe(lib: Path, timeout: float = 300) -> str | None:
    """Map ``lib`` in a short-lived child process first: None when it loads there, else why not
    (a damaged library crashes the child — "Bus error", a segfault — never this process)."""
    code = "import sys, torch; torch.ops.load_library(sys.argv[1])"
    proc = signals.popen_group([sys.executable, "-c", code, str(lib)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "loading it in a separate process did not finish"
    finally:
        signals.end_group(proc)
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"loading it crashed a separate process (signal {-proc.returncode})"
    last = (err or "").strip().splitlines()[-1:] or [""]
    return f"it does not load: {last[0][:200]}"


def record(lib: Path) -> None:
    """Record the hash of a library that loaded in the child (before it is renamed into place)."""
    integrity.write_sidecar(lib)


def compile_in_child(name: str, sources, build_dir: Path, flags: list[str],
                     ldflags: list[str] | None = None) -> None:
    """Compile ``sources`` (a path or a list of paths) into ``build_dir/name.so`` and load it, in a
    child process (the arguments of ``torch.utils.cpp_extension.load``).

    Raises RuntimeError with the compiler's message when the build or the load fails (a crash
    while mapping the library included). Interrupting this process ends the child's whole group.
    """
    srcs = [str(sources)] if isinstance(sources, str | os.PathLike) else [str(x) for x in sources]
    spec = json.dumps({"name": name, "sources": srcs, "build_dir": str(build_dir), "flags": list(flags),
                       "ldflags": ["-fopenmp"] if ldflags is None else list(ldflags), "parent": os.getpid()})
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)}
    proc = signals.popen_group(
        [sys.executable, "-c", "from tda.engine.kernel_cache import _child; _child()", spec],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate()
    finally:
        signals.end_group(proc)  # interrupted: the compiler goes too
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit {proc.returncode}")
        tail = (out or "").strip()[-2000:]
        raise RuntimeError(f"kernel build/load in a child process failed ({how}): {tail}")
    lib = build_dir / f"{name}.so"
    if not lib.is_file() or lib.stat().st_size == 0:
        raise RuntimeError(f"the kernel build produced no library at {lib}")


def _child() -> None:  # pragma: no cover - runs in the child process
    spec = json.loads(sys.argv[1])
    signals.child_main(int(spec["parent"]))
    from torch.utils.cpp_extension import load

    load(spec["name"], sources=spec["sources"], extra_cflags=spec["flags"], extra_ldflags=spec["ldflags"],
         build_directory=spec["build_dir"], is_python_module=False, verbose=False)
