"""What every suite provides: named presets -> :class:`Case` objects -> rows.

A suite module defines one :class:`Suite` subclass with

- ``name`` and ``presets`` (at least ``smoke``, ``quick``, ``full``);
- ``cases(preset, backends, device) -> list[Case]``: pure, cheap, deterministic (no framework import);
- ``run(case, ctx) -> Iterator[row]``: measures one case through the backend interface and yields rows
  built with :func:`harness.measure.records.make_row` (``case.row(...)`` does that), one per measurement,
  *as each is finished* — the runner writes each to disk before the next one is measured.

The runner (``harness.run.runner``) executes ``run`` in a worker process per backend family, with
timeouts, and records crashes as rows. The same ``run`` is called by the asv classes, so there is
one implementation of every measurement.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from harness.measure.records import make_row
from harness.core.errors import InputError

SUITE_MODULES = {"throughput": "suites.throughput.suite", "memory": "suites.memory.suite",
                 "gradients": "suites.gradients.suite", "ctc": "suites.ctc.suite"}
PRESETS = ("smoke", "quick", "full")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Case:
    """One unit of work of a suite: a backend on a device with a shape and suite-specific settings.

    ``name`` identifies the case within its suite (e.g. ``lstm-L1-B64-T100-I256-H256-float32``);
    ``settings`` holds suite-specific knobs (``algorithm``, ``rho``, ...) and goes into every row's ``extra``.
    """

    suite: str
    name: str
    backend: str
    device: str = "cpu"
    cell: Optional[str] = None
    layers: Optional[int] = None
    batch: Optional[int] = None
    seq_len: Optional[int] = None
    input_size: Optional[int] = None
    hidden_size: Optional[int] = None
    dtype: Optional[str] = None
    settings: Dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        """Unique within a run: what ``--resume`` looks for."""
        return f"{self.suite}/{self.backend}/{self.device}/{self.name}"

    def fields(self) -> Dict[str, Any]:
        return {"suite": self.suite, "case": self.name, "backend": self.backend, "variant": self.backend,
                "device": self.device, "dtype": self.dtype, "cell": self.cell, "layers": self.layers,
                "batch": self.batch, "seq_len": self.seq_len, "input_size": self.input_size,
                "hidden_size": self.hidden_size}

    def row(self, metric: str, value: Optional[float], unit: str, **kw: Any) -> Dict[str, Any]:
        """A row of this case; ``settings`` are merged into ``extra`` (explicit keywords win)."""
        extra = {**self.settings, **{k: v for k, v in kw.items() if k not in _ROW_KW}}
        main = {k: v for k, v in kw.items() if k in _ROW_KW}
        return make_row(self.fields(), metric, value, unit, **main, **extra)

    def spec(self):
        """The :class:`~harness.core.spec.CellSpec` of this case."""
        from harness.core.spec import CellSpec
        return CellSpec(self.cell, self.input_size, self.hidden_size, self.layers or 1)


_ROW_KW = ("samples", "q25", "q75", "n", "status", "reason")


@dataclass
class RunContext:
    """What the runner tells a suite about this run."""

    seed: int = 0
    threads: Optional[int] = None
    budget_s: Optional[float] = None  # seconds of timed repeats per measurement (None: the suite's default)
    preset: str = "quick"
    run_dir: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    process: int = 0  # which of the case's independent processes this is (0-based)
    processes: int = 1  # how many processes time each case of this suite (a suite may split its budget)


class Suite:
    """Base class of a suite. Subclasses override ``name``, ``presets``, ``cases`` and ``run``."""

    name: str = "base"
    presets = PRESETS
    #: A module with ``section(df, fig_dir, **opts) -> str``: this suite's part of the report (None: generic),
    #: and optionally ``findings(df, **opts) -> list[str]``: its bullets in the report's Findings.
    report_module: Optional[str] = None

    def check_preset(self, preset: str) -> None:
        if preset not in self.presets:
            raise InputError(f"preset: got {preset!r}; allowed for suite {self.name!r}: {', '.join(self.presets)}")

    def check_args(self, preset: str, device: str) -> None:
        """Validate what ``cases`` is given: a preset of this suite, a known device."""
        self.check_preset(preset)
        if device not in DEVICES:
            raise InputError(f"device: got {device!r}; allowed: {', '.join(DEVICES)}")

    def cases(self, preset: str, backends: List[str], device: str = "cpu") -> List[Case]:
        raise NotImplementedError

    def exclusive(self, case: Case) -> bool:
        """Whether ``case`` measures time (or anything else that other work on its host would disturb): on a
        cluster it then gets its host (or GPU) to itself; a case that only checks numbers may share one with
        others. The default: it does not (a suite that times overrides this)."""
        return False

    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        raise NotImplementedError

    def report_section(self, df, fig_dir: str, **opts: Any) -> Optional[str]:
        """This suite's part of the report (Markdown; figures written into ``fig_dir``), from its rows ``df``.

        The default calls ``section`` of :attr:`report_module` (None: a generic table of medians). Options
        passed: ``baseline``, ``run_dir``, ``meta``.
        """
        if not self.report_module:
            return None
        return importlib.import_module(self.report_module).section(df, fig_dir, **opts)

    def report_findings(self, df, **opts: Any) -> List[str]:
        """This suite's headline findings for the top of the report: Markdown bullet lines, each linking to
        the part of its section it comes from, derived from its rows ``df``.

        The default calls ``findings`` of :attr:`report_module` where it has one (else: none). Options as for
        :meth:`report_section`.
        """
        if not self.report_module:
            return []
        fn = getattr(importlib.import_module(self.report_module), "findings", None)
        return list(fn(df, **opts)) if callable(fn) else []


def declared(backend: str, device: str) -> Dict[str, Any]:
    """What ``backend`` declares (:func:`implementations.registry.capabilities`); where it cannot run on ``device``
    here, its CPU declaration (which cells and sweeps a backend runs does not depend on the device); {} when it
    cannot be described at all."""
    from implementations import registry
    return registry.describe(backend, device).capabilities or registry.describe(backend, "cpu").capabilities


def wants_cell(caps: Dict[str, Any], cell: str) -> bool:
    """Whether a backend declaring ``caps`` (:func:`declared`) gets a suite's cases of ``cell``: a gated linear cell
    only where it declares that cell; a classic cell everywhere (an unsupported one is recorded ``skipped`` with
    the reason) except on a variant that runs nothing but the gated linear cells (``sweep = "gated-linear"``:
    the parallel scans), whose cases would be nothing but skipped rows. No declaration: every case."""
    from harness.core import cells
    if not caps:
        return True
    if cell in cells.names() and cells.get(cell).gated_linear:
        return cell in (caps.get("cells") or ())
    return caps.get("sweep") != "gated-linear"


def get_suite(name: str) -> Suite:
    """The suite called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in SUITE_MODULES:
        raise InputError(f"suite: got {name!r}; allowed: {', '.join(SUITE_MODULES)}")
    module = importlib.import_module(SUITE_MODULES[name])
    return module.SUITE


def existing_suites() -> List[str]:
    """The suites whose module is present in this tree."""
    out = []
    for name, mod in SUITE_MODULES.items():
        if importlib.util.find_spec(mod) is not None:
            out.append(name)
    return out
