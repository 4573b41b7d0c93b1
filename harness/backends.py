"""The backend registry: which backends exist, which run here, and why the others do not.

``get(name, device)`` returns a ready :class:`~implementations.base.BackendBase`. Names:

- built-ins: ``numpy``, ``torch`` (nn.RNN/LSTM/GRU; cuDNN on CUDA), ``torch-native`` (CUDA with cuDNN
  off), ``torch-cell`` (a Python loop over the cell), ``torch-compile``, ``jax`` (``lax.scan``),
  ``jax-unroll8``;
- plug-ins registered under the entry-point group ``rnnbench.backends`` (value ``module:Class``);
- any ``module:Class`` given directly.

Frameworks are imported only when a backend is asked for (or probed by :func:`available`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from implementations.base import DEVICES, BackendBase

ENTRY_POINT_GROUP = "rnnbench.backends"

#: name -> (module, class, constructor options, pip extra that installs it)
BUILTIN: Dict[str, Tuple[str, str, dict, str]] = {
    "numpy": ("implementations.numpy_backend", "NumpyBackend", {}, ""),
    "torch": ("implementations.torch_backend", "TorchBackend", {}, "torch"),
    "torch-native": ("implementations.torch_backend", "TorchNativeBackend", {}, "torch"),
    "torch-cell": ("implementations.torch_backend", "TorchCellBackend", {}, "torch"),
    "torch-compile": ("implementations.torch_backend", "TorchCompileBackend", {}, "torch"),
    "jax": ("implementations.jax_backend", "JaxBackend", {}, "jax"),
    "jax-unroll8": ("implementations.jax_backend", "JaxBackend", {"unroll": 8}, "jax"),
}
#: the families, for ``--backend torch`` meaning "the torch family" in suites
FAMILIES = {"numpy": ["numpy"], "torch": ["torch", "torch-native", "torch-cell", "torch-compile"],
            "jax": ["jax", "jax-unroll8"]}


@dataclass
class BackendInfo:
    """One (backend, device) pair: can it run here, and if not, why."""

    name: str
    device: str
    available: bool
    reason: str = ""
    family: str = ""
    versions: Dict[str, str] = field(default_factory=dict)


class BackendError(ValueError):
    """An unknown or unusable backend name/device (a usage error: exit code 2 in the CLI)."""


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
    versions = {}
    if ok:
        try:
            versions = klass(device=device, **opts).versions()
        except Exception as e:
            ok, reason = False, f"could not be constructed: {type(e).__name__}: {e}"
    return BackendInfo(name, device, ok, reason, family, versions)


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
    return klass(device=device, **{**opts, **options})
