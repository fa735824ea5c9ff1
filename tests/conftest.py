"""Shared fixtures: tiny models (fast, random weights) and the real embedded model (slow)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt", "tiny-qwen3", "tiny-mistral")


@functools.cache
def _load(spec: str):
    from tda.models.load import load_model

    lm = load_model(spec)
    _LOADED.append(lm)
    return lm


_LOADED: list = []  # the session's shared models (fixtures)


def _loaded_models() -> list:
    return list(_LOADED)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Give every test torch's thread count as it found it: the app sets it process-wide
    (``app.state.apply_threads``: 1 by default), and an in-process AppTest left every later test
    on one thread — where, on an AMD EPYC, ``test_scoring``'s WINA comparison flipped a top-k."""
    import torch

    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def _release_memory_after_module():
    """After each test module: drop the random-weights controls it built (1.1 GB each for Gemma), collect,
    and hand the freed heap back to the system (glibc keeps it otherwise; the suite's RSS only grew)."""
    yield
    import gc
    import sys

    control = sys.modules.get("analysis.random_control")
    if control is not None:
        control._CACHE.clear()
    for lm in _loaded_models():  # a TransformerLens bridge holds its own modules and tokenizer (~0.3 GB for Gemma)
        with lm._bridge_lock:
            lm._bridge = None
    for _ in range(4):  # a model dropped from the engine's WeakKeyDictionary caches (fast tables, plans) leaves
        if not gc.collect():  # its modules' cycles to the next pass: collect until nothing is found
            break
    from tda.common.memory import release_free_memory

    release_free_memory()


@pytest.fixture(scope="session")
def load_tiny():
    """``load_tiny(spec)`` returns a cached tiny model (shared across tests; never mutate it)."""
    return _load


@pytest.fixture(scope="session")
def tiny_llama():
    return _load("tiny-llama")


@pytest.fixture(scope="session")
def gemma():
    """The real embedded Gemma 3 270M (converted once into the cache). Mark tests ``slow``."""
    return _load("gemma-3-270m")


@pytest.fixture
def run_cli(capsys):
    """Run the ``tda`` CLI in-process: returns (exit code, stdout, stderr)."""
    from tda.cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path


# --- opt-in memory profile of the suite: TDA_TEST_RSS=path.tsv records, per test (setup, call and
# teardown; module fixtures included for a module's last test), in MiB: the process's RSS after it, the
# highest RSS sampled during it (every 10 ms), the process's peak so far and its largest finished
# child's peak (``/usr/bin/time -v`` reports the largest of the two); then the test's seconds.
_RSS_LOG = os.environ.get("TDA_TEST_RSS")

if _RSS_LOG:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        import resource
        import threading
        import time

        import psutil

        proc, top, done = psutil.Process(), [0], threading.Event()

        def sample():
            while True:
                top[0] = max(top[0], proc.memory_info().rss)
                if done.wait(0.01):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        sampler.start()
        yield
        done.set()
        sampler.join()
        rss = proc.memory_info().rss
        top[0] = max(top[0], rss)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        mib = [f"{v / 2**20:.0f}" for v in (rss, top[0], peak, children)]
        with open(_RSS_LOG, "a") as f:
            f.write("\t".join([item.nodeid, *mib, f"{time.perf_counter() - t0:.2f}"]) + "\n")
