"""The backend registry: which backends exist, which run here, and why the others do not.

``get(name, device)`` returns a ready :class:`~implementations.base.BackendBase`. Names:

- built-ins: ``numpy``, ``torch`` (nn.RNN/LSTM/GRU; cuDNN on CUDA), ``torch-native`` (CUDA with cuDNN
  off), ``torch-cell`` (a Python loop over the cell), ``torch-compile``, ``jax`` (``lax.scan``),
  ``jax-unroll8``; the gated linear cells' parallel scans ``torch-pscan`` (Hillis–Steele) and ``jax-pscan``
  (``lax.associative_scan``);
- plug-ins registered under the entry-point group ``rnnbench.backends`` (value ``module:Class``);
- any ``module:Class`` given directly.

Frameworks are imported only when a backend is asked for (or probed by :func:`available`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from harness.core.errors import BackendError
from implementations.base import DEVICES, BackendBase

ENTRY_POINT_GROUP = "rnnbench.backends"

#: name -> (module, class, constructor options, pip extra that installs it)
BUILTIN: Dict[str, Tuple[str, str, dict, str]] = {
    "numpy": ("implementations.numpy.backend", "NumpyBackend", {}, ""),
    "torch": ("implementations.torch.backend", "TorchBackend", {}, "torch"),
    "torch-native": ("implementations.torch.backend", "TorchNativeBackend", {}, "torch"),
    "torch-cell": ("implementations.torch.backend", "TorchCellBackend", {}, "torch"),
    "torch-compile": ("implementations.torch.backend", "TorchCompileBackend", {}, "torch"),
    "jax": ("implementations.jax.backend", "JaxBackend", {}, "jax"),
    "jax-unroll8": ("implementations.jax.backend", "JaxBackend", {"unroll": 8}, "jax"),
    "torch-pscan": ("implementations.torch.backend", "TorchPscanBackend", {}, "torch"),
    "jax-pscan": ("implementations.jax.backend", "JaxBackend", {"scan": "parallel"}, "jax"),
}
#: The backend every other one is checked against (its class says ``reference = True``).
REFERENCE = "numpy"


@dataclass
class BackendInfo:
    """One (backend, device) pair: can it run here, and if not, why."""

    name: str
    device: str
    available: bool
    reason: str = ""
    family: str = ""
    versions: Dict[str, str] = field(default_factory=dict)
    #: What the backend declares and answers (see :func:`describe`); empty when it could not be built.
    capabilities: Dict[str, Any] = field(default_factory=dict)




def _plugin_entry_points() -> Dict[str, str]:
    try:
        from importlib.metadata import entry_points
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # pragma: no cover - broken metadata should not break the registry
        return {}
    return {ep.name: ep.value for ep in eps}


def names() -> List[str]:
    """Every backend name known here (built-in and entry-point plug-ins)."""
    return list(BUILTIN) + [n for n in _plugin_entry_points() if n not in BUILTIN]


def _resolve(name: str) -> Tuple[type, dict]:
    """Import and return (class, options) for ``name``; raises ImportError if its framework is missing."""
    if name in BUILTIN:
        mod, cls, opts, _ = BUILTIN[name]
    else:
        target = _plugin_entry_points().get(name, name)
        if ":" not in target:
            raise BackendError(f"backend: got {name!r}; allowed: {', '.join(names())} or 'module:Class'")
        mod, cls = target.split(":", 1)
        opts = {}
    module = importlib.import_module(mod)
    try:
        klass = getattr(module, cls)
    except AttributeError:
        raise BackendError(f"backend {name!r}: module {mod!r} has no class {cls!r}") from None
    if not (isinstance(klass, type) and issubclass(klass, BackendBase)):
        raise BackendError(f"backend {name!r}: {mod}:{cls} is not a subclass of implementations.base.BackendBase")
    return klass, opts


def resolution_problem(name: str) -> Optional[str]:
    """Why ``module:Class`` does not name a usable backend class (no such module or class, not a BackendBase
    subclass, the module's import raises — a missing dependency included: a plug-in named explicitly must load),
    or None."""
    if ":" not in name:
        return None
    mod, cls = name.split(":", 1)
    if not mod or not cls:
        return "expected module:Class with both parts"
    try:
        import importlib.util
        if importlib.util.find_spec(mod) is None:
            return f"no module named {mod!r} (is it on PYTHONPATH?)"
    except (ImportError, ValueError) as e:
        return f"no module named {mod!r} ({e})"
    try:
        _resolve(name)
    except BackendError as e:
        return str(e).replace(f"backend {name!r}: ", "", 1)  # the caller names the backend
    except Exception as e:  # noqa: BLE001 - a plug-in named explicitly that cannot be imported: say why, stop
        return f"importing {mod!r} failed: {type(e).__name__}: {e}"
    return None


def _missing_reason(name: str, err: ImportError) -> str:
    extra = BUILTIN.get(name, ("", "", {}, ""))[3]
    hint = f" (pip install 'rnnbench[{extra}]')" if extra else ""
    return f"not installed: {err}{hint}"


def probe(name: str, device: str = "cpu") -> BackendInfo:
    """Whether ``name`` can run on ``device`` here, without raising."""
    if device not in DEVICES:
        return BackendInfo(name, device, False, f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    try:
        klass, opts = _resolve(name)
    except ImportError as e:
        return BackendInfo(name, device, False, _missing_reason(name, e))
    except BackendError as e:
        return BackendInfo(name, device, False, str(e))
    family = getattr(klass, "family", "")
    if device not in klass.devices:
        return BackendInfo(name, device, False, f"runs on {', '.join(klass.devices)} only", family)
    try:
        ok, reason = klass.probe(device)
    except Exception as e:  # a plug-in's probe must not break `rnnbench list`
        ok, reason = False, f"probe failed: {type(e).__name__}: {e}"
    versions: Dict[str, str] = {}
    caps: Dict[str, Any] = {}
    if ok:
        try:
            be = klass(device=device, **opts)
            if name not in BUILTIN:
                be._registry_name = name
            versions = be.versions()
            caps = capabilities(be)
            family = be.family
        except Exception as e:
            ok, reason = False, f"could not be constructed: {type(e).__name__}: {e}"
    return BackendInfo(name, device, ok, reason, family, versions, caps)


def capabilities(be: BackendBase) -> Dict[str, Any]:
    """What a backend instance declares and answers, as plain data (for suites' case lists and meta.json)."""
    return {"family": be.family, "framework": be.framework, "reference": bool(be.reference),
            "sweep": be.sweep, "algorithms": list(be.algorithms), "dtypes": list(be.dtypes),
            "cells": list(be.supported_cells()), "max_layers": be.max_layers, "has_ctc": bool(be.has_ctc),
            "scan_form": be.scan_form, "measured_as": {w: be.measured_as(w) for w in ("ctc", "memory", "gated")}}


def describe(name: str, device: str = "cpu") -> BackendInfo:
    """:func:`probe` with the capabilities: what suites ask when they build cases (importing the backend's
    module, never running it)."""
    return probe(name, device)


def reference(device: str = "cpu") -> BackendBase:
    """The reference backend (NumPy, on the CPU), against which every other one is checked."""
    return get(REFERENCE, "cpu")


def available(devices: Tuple[str, ...] = DEVICES, backends: Optional[List[str]] = None) -> List[BackendInfo]:
    """Probe every backend (or those named) on every device; unavailable ones carry the reason."""
    return [probe(n, d) for n in (backends or names()) for d in devices]


def get(name: str, device: str = "cpu", **options) -> BackendBase:
    """A ready backend instance. Raises :class:`BackendError` (a ``ValueError``) saying why not."""
    if device not in DEVICES:
        raise BackendError(f"device: got {device!r}; allowed: {', '.join(DEVICES)}")
    if name not in BUILTIN and name not in _plugin_entry_points() and ":" not in name:
        raise BackendError(f"backend: got {name!r}; allowed: {', '.join(names())} or 'module:Class'")
    try:
        klass, opts = _resolve(name)
    except ImportError as e:
        raise BackendError(f"backend {name!r} is unavailable: {_missing_reason(name, e)}") from None
    if device not in klass.devices:
        raise BackendError(f"backend {name!r} runs on {', '.join(klass.devices)} only; got device={device!r}")
    ok, reason = klass.probe(device)
    if not ok:
        raise BackendError(f"backend {name!r} on {device} is unavailable: {reason}")
    be = klass(device=device, **{**opts, **options})
    if name not in BUILTIN:
        be._registry_name = name  # a plug-in answers to the name it was asked for (entry point or module:Class)
    return be


_INSTANCES: Dict[Tuple[str, str], BackendBase] = {}
_THREADS: Dict[Tuple[str, str], int] = {}


def instance(name: str, device: str = "cpu", threads: Optional[int] = None) -> BackendBase:
    """The one instance of ``name`` on ``device`` in this process (its JIT caches and thread setting live as
    long as the process). ``threads``: intra-op threads, set through ``set_threads`` when first given or
    changed. Raises :class:`BackendError` like :func:`get`."""
    import warnings
    key = (name, device)
    be = _INSTANCES.get(key)
    if be is None:
        be = _INSTANCES[key] = get(name, device)
    if threads is not None and _THREADS.get(key) != int(threads):
        with warnings.catch_warnings():
            # A framework that fixes its pools at start-up (JAX) warns on a second call; the runner set the
            # process's threads before anything started, so the setting already holds.
            warnings.simplefilter("ignore", RuntimeWarning)
            be.set_threads(int(threads))
        _THREADS[key] = int(threads)
    return be
