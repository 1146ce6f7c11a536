"""Private frozen copies of a caller's model, kept between explain() calls.

explain() never runs Captum on the caller's model: eval mode, frozen parameters, the device, the
memory layout and Captum's hooks (DeepLift, GuidedBackprop, Grad-CAM) all land on a private copy.
A deep copy per call cost about 0.7 ms of CPU on the demo CNN, a large share of a 64-stimulus
call, so the copy is kept per (caller's model object, device), weakly: it dies with the model.

The hazard is a stale copy. A kept copy is reused only while the model's structure is the one it
was built from: the same module objects under the same names, the same plain attributes (stride,
padding, ...), the same parameter and buffer names, shapes and dtypes, and no hooks of the
caller's (a model with hooks is copied afresh each call, as before). Even then, the values of
every parameter and buffer are copied from the caller's model at every call: version counters and
data pointers would miss in-place changes made through ``.data``. A copy is lent to one call at a
time (a concurrent call gets a fresh one); a call that raises, or leaves hooks or attributes on
the copy, drops it from the cache.
"""
from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .models import ModelInfo, attribution_layout, inspect_model

_PLAIN = (int, float, bool, str, type(None))
_CALL_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class Frozen:
    """A private copy of a model: eval mode, parameters frozen, on one device, in ``layout``."""
    net: nn.Module
    layout: torch.memory_format  # for 4-D (image) inputs; other inputs stay contiguous
    _inspected: dict = field(default_factory=dict)  # input shape (without N) -> ModelInfo

    def inspect(self, x: torch.Tensor) -> ModelInfo:
        """inspect_model, whose forward pass runs once per input shape of this copy: the copy's
        structure is fixed, and weights do not change which shapes fit or the class count."""
        key = tuple(x.shape[1:])
        if key not in self._inspected:
            self._inspected[key] = inspect_model(self.net, x)  # ValueError: nothing cached
        return self._inspected[key]

    def input_layout(self, x: torch.Tensor) -> torch.memory_format:
        return self.layout if x.ndim == 4 else torch.contiguous_format


@dataclass
class _Entry:
    frozen: Frozen
    structure: tuple
    tensors: list[torch.Tensor]  # the copy's parameters, then buffers, in the caller's order
    residue: tuple  # hooks and attributes on the copy when built; a clean call leaves these
    lock: threading.Lock = field(default_factory=threading.Lock)


_LOCK = threading.Lock()  # guards _CACHE itself; each entry's lock guards its use
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {device: _Entry}


def _token(value):
    if isinstance(value, _PLAIN) or (isinstance(value, tuple)
                                     and all(isinstance(v, _PLAIN) for v in value)):
        return value
    if isinstance(value, torch.Tensor):  # a plain tensor attribute (not a parameter or buffer)
        return ("tensor", id(value), value._version, value.data_ptr())
    return ("object", id(value))


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _structure(model: nn.Module, tensors: list[tuple[str, torch.Tensor]]) -> tuple | None:
    """What a copy of ``model`` depends on apart from parameter and buffer values; None when
    the model carries hooks (they may hold anything, even a reference that keeps it alive)."""
    modules = []
    for name, m in model.named_modules():
        if any(getattr(m, hooks, None) for hooks in _CALL_HOOKS):
            return None
        attrs = tuple((k, _token(v)) for k, v in vars(m).items()
                      if not k.startswith("_") and k != "training")
        modules.append((name, id(m), type(m), attrs))
    return (tuple(modules), tuple((n, tuple(t.shape), t.dtype) for n, t in tensors))


def _residue(net: nn.Module) -> tuple:
    return tuple((len(vars(m)), *(len(getattr(m, h)) for h in _CALL_HOOKS))
                 for m in net.modules())


def _build(model: nn.Module, device: torch.device, structure: tuple | None) -> _Entry:
    net = copy.deepcopy(model).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    layout = attribution_layout(net, device)
    net = net.to(memory_format=layout)
    return _Entry(frozen=Frozen(net=net, layout=layout), structure=structure,
                  tensors=[t for _, t in _tensors(net)], residue=_residue(net))


def _evict(model: nn.Module, key: str, entry: _Entry) -> None:
    with _LOCK:
        per_device = _CACHE.get(model)
        if per_device is not None and per_device.get(key) is entry:
            del per_device[key]


@contextmanager
def frozen_copy(model: nn.Module, device: torch.device) -> Iterator[Frozen]:
    """Lend a private frozen copy of ``model`` on ``device`` for one call (see module doc)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    src = _tensors(model)
    structure = _structure(model, src)
    key = str(device)
    entry, cached = None, False
    if structure is not None:
        with _LOCK:
            per_device = _CACHE.setdefault(model, {})
            kept = per_device.get(key)
            if kept is not None and kept.structure != structure:
                del per_device[key]
                kept = None
            if kept is not None and kept.lock.acquire(blocking=False):
                entry, cached = kept, True
    refresh = entry is not None  # a new copy was just taken from the model's current values
    if entry is None:
        entry = _build(model, device, structure)
        if structure is not None:
            with _LOCK:
                per_device = _CACHE.setdefault(model, {})
                if key not in per_device:  # a copy lent to a concurrent call stays cached
                    entry.lock.acquire()
                    per_device[key] = entry
                    cached = True
    try:
        if refresh:
            with torch.no_grad():
                for mine, (_, theirs) in zip(entry.tensors, src):
                    mine.copy_(theirs)
        yield entry.frozen
        if cached and _residue(entry.frozen.net) != entry.residue:
            _evict(model, key, entry)
    except BaseException:
        if cached:
            _evict(model, key, entry)
        raise
    finally:
        if cached:
            entry.lock.release()
