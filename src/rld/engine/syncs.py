"""Counting host synchronisations: the operations that make the host wait for the device.

A training step on CUDA must never read a device value on the host: each read stalls the CPU until
the GPU has caught up, and a step that reads one cannot be captured as a CUDA graph.
:class:`HostSyncCounter` is a dispatch mode that sees every aten operation of the code run inside it;
``benchmarks/gpu_check.py`` and the tests run training steps under it, on the CPU too, so that a new
synchronisation anywhere in a step is caught without a GPU.
"""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _in_cpu_sgd() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in ("_single_tensor_sgd", "_multi_tensor_sgd"):
            return True
        frame = frame.f_back
    return False


class HostSyncCounter(TorchDispatchMode):
    """Counts the operations that make the host wait for the device: reading a tensor's value
    (``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``) and copies from
    a device to the CPU. On the CPU the second kind cannot occur; the first is what matters there."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.fail, self.events = fail, []
        self.exempted = 0

    def _hit(self, what: str) -> None:
        self.events.append(what)
        if self.fail:
            raise AssertionError(f"host synchronisation in a training step: {what}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            if args[0].device.type == "cpu" and _in_cpu_sgd():
                # the CPU's (non-fused) SGD reads a tensor learning rate: no device involved, and CUDA's
                # fused SGD reads it on the device
                self.exempted += 1
            else:
                self._hit("aten._local_scalar_dense (.item(), bool(), int(), .tolist())")
        elif func is aten._to_copy.default:
            src, dst = args[0], kwargs.get("device")
            if src.device.type != "cpu" and dst is not None and torch.device(dst).type == "cpu":
                self._hit("device-to-host copy (.cpu() / .to('cpu'))")
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            if src.device.type != "cpu" and dst.device.type == "cpu":
                self._hit("device-to-host copy (copy_)")
        return func(*args, **kwargs)
