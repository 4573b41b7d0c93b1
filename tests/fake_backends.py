"""A plug-in backend and a tiny suite for fault injection in the runner tests.

Not a test module. The runner tests use it as

- backend ``tests.fake_backends:FakeBackend`` (a plug-in given as ``module:Class``; it records the thread
  count the worker sets) and ``tests.fake_backends:UnavailableBackend`` (its probe says no);
- suite ``tests.fake_backends:SUITE`` (``module:ATTR``), or registered in ``suites.base.SUITE_MODULES``;
  ``tests.fake_backends:TIMING_SUITE`` is the same suite with every case exclusive (as a timing suite's).

Presets of the fake suite (each case's ``settings["mode"]`` says what it does in the worker):

- ``smoke``: the fault mix, in this order: ok, crash (``os._exit(3)`` after one row), hang (one row, then
  sleeps past its 1.5 s limit), oom (``MemoryError``), raise (``RuntimeError``), ok;
- ``quick``: six slow cases (two rows each, 0.3 s apart) for the kill/resume tests;
- ``full``: two fast ok cases.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List

import numpy as np

from implementations.base import BackendBase
from suites.base import Case, RunContext, Suite

FAKE = f"{__name__}:FakeBackend"
UNAVAILABLE = f"{__name__}:UnavailableBackend"
SUITE_REF = f"{__name__}:SUITE"


class FakeBackend(BackendBase):
    """Computes nothing useful; remembers what the runner told it."""

    family = "fake"
    variant = "fake"
    threads_set: List[int] = []

    def set_threads(self, n: int) -> None:
        type(self).threads_set.append(int(n))

    def _forward(self, spec, params, x, state):
        T, B, _ = x.shape
        return np.zeros((T, B, spec.hidden_size), x.dtype), state


class UnavailableBackend(BackendBase):
    family = "fake-unavailable"
    variant = "fake-unavailable"

    @classmethod
    def probe(cls, device: str):
        return False, "fake backend: not installed here (test)"


PRESET_MODES = {
    "smoke": ["ok", "crash", "hang", "oom", "raise", "ok"],
    "quick": ["slow"] * 6,
    "full": ["ok", "ok"],
}


class FakeSuite(Suite):
    name = "fake"

    def cases(self, preset: str, backends: List[str], device: str = "cpu") -> List[Case]:
        self.check_preset(preset)
        out = []
        for b in backends:
            for i, mode in enumerate(PRESET_MODES[preset]):
                settings: Dict[str, Any] = {"mode": mode}
                if mode == "hang":
                    settings["timeout_s"] = 1.5
                out.append(Case(self.name, f"{i}-{mode}", b, device, cell="lstm", layers=1, batch=2, seq_len=3,
                                input_size=4, hidden_size=5, dtype="float32", settings=settings))
        return out

    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        mode = case.settings["mode"]
        if mode == "ok":
            yield case.row("a_ms", 1.0, "ms", samples=[0.9, 1.0, 1.1])
            try:
                pinned = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover
                pinned = None
            yield case.row("b_ms", 2.0, "ms", env_omp=os.environ.get("OMP_NUM_THREADS"),
                           set_threads=list(FakeBackend.threads_set), ctx_threads=ctx.threads, seed=ctx.seed,
                           cpus=pinned, worker_pid=os.getpid(), ctx_process=ctx.process,
                           affinity=",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
        elif mode == "slow":
            yield case.row("a_ms", 1.0, "ms")
            time.sleep(0.3)
            yield case.row("b_ms", 2.0, "ms")
            time.sleep(0.3)
        elif mode == "crash":
            yield case.row("a_ms", 1.0, "ms")
            os._exit(3)
        elif mode == "hang":
            yield case.row("a_ms", 1.0, "ms")
            time.sleep(60)
        elif mode == "oom":
            raise MemoryError("fake: cannot allocate 1 TiB")
        elif mode == "raise":
            raise RuntimeError("boom")
        else:  # pragma: no cover
            raise ValueError(f"mode: {mode!r}")


class FakeTimingSuite(FakeSuite):
    """The fake suite as if it timed things: each case wants a host (a cluster worker) to itself."""

    def exclusive(self, case: Case) -> bool:
        return True


SUITE = FakeSuite()
TIMING_SUITE = FakeTimingSuite()
TIMING_SUITE_REF = f"{__name__}:TIMING_SUITE"
