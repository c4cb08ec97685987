"""DKD and RLD as one closed-form kernel: both KL terms and the student's gradient in one pass.

Both losses are a *binary* KL (class k_T of the teacher against the rest, the true class y of the
student against the rest) and a *masked* KL (the softmaxes over the kept classes). Autograd through
the composite form (:mod:`rld.losses.decoupled`, the reference) records ~40 small operations and as
many passes over the logits. Here everything comes from four log-normalisers per row — for each
model, over all classes but k and over the kept classes (the one over all classes follows) — and
the gradient is

    ∂(T_b²·KL_bin)/∂z_S,j  = T_b·(b_S,0 − b_T,0)        for j = y,
                           = T_b·(b_S,1 − b_T,1)·r_j    for j ≠ y,   r = softmax without y,
    ∂(T_m²·KL_mask)/∂z_S,j = T_m·(q_S,j − q_T,j)·[j kept],          q = softmax over the kept

(b_S = [p_S(y), 1 − p_S(y)], b_T = [p_T(k_T), 1 − p_T(k_T)]; p_S,j = b_S,1·r_j off the target).
Every probability is the exponential of a difference of log-normalisers: nothing is formed as
1 − p, nothing underflows into a log, and an empty kept set gives a log-normaliser of −∞ that only
ever meets ``where`` (its row contributes 0).

:func:`decoupled_kernel` is plain tensor code with no host synchronisation. It runs through
``torch.compile``, which fuses it into a few loops per row — C++ on the CPU, Triton on a GPU — and
is safe inside a CUDA graph. It is compiled once per mode (DKD, RLD ``ge`` / ``g``) and dtype with
every size and weight dynamic (``dynamic=True``), so one compiled version serves every batch size
(a last partial batch too) and every temperature and weight, whichever came first in the process:
two runs of one configuration in one process (a sweep, ``rld tune``) compute with the same code
and give the same values. (Dynamo's default would compile the first call for its exact shapes and
values and the next different one as dynamic, so a batch size could be served by either version
depending on what ran before.) Where compiling fails (no C++ compiler, no Triton) it warns once
and runs eagerly: the same numbers, more time.
``RLD_COMPILE_LOSSES=0`` or :func:`use_compiled` turns compiling off.

The kernel serves a teacher whose logits need no gradient; otherwise the composite form is used.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def _logsumexp_over(x: Tensor, chosen: Tensor) -> Tensor:
    """log Σ_{j chosen} exp(x_j) per row, keepdim; −∞ for a row with nothing chosen."""
    return torch.logsumexp(torch.where(chosen, x, _NEG_INF), dim=1, keepdim=True)


def decoupled_kernel(
    z_s: Tensor,
    z_t: Tensor,
    target: Tensor,
    mask: str | None,
    t_bin: float,
    t_mask: float,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(α·binary + β·masked, T_b²·mean binary KL, T_m²·mean masked KL, and the gradients of the
    three w.r.t. z_s stacked (3, B, C)).

    ``mask=None``: DKD — the teacher's binary is on the target and only the target is removed.
    ``"ge"`` / ``"g"``: RLD — the teacher's binary is on its argmax (other maxima tied with it stay
    in the rest), and the classes with z_T ≥ (resp. >) z_T,true are removed.
    """
    batch = z_s.shape[0]
    y = target[:, None]
    classes = torch.arange(z_s.shape[1], device=z_s.device)
    is_y = classes == y
    if mask is None:
        k, is_k, keep = y, is_y, ~is_y
    else:
        k = z_t.argmax(dim=1, keepdim=True)
        is_k = classes == k
        z_t_true = z_t.gather(1, y)
        keep = z_t < z_t_true if mask == "ge" else z_t <= z_t_true

    # Binary part: log b = [x_k, lse(x without k)] − lse(x), lse(x) = logaddexp(x_k, lse(x without k)).
    xs, xt = z_s / t_bin, z_t / t_bin
    xs_y, xt_k = xs.gather(1, y), xt.gather(1, k)
    rest_s, rest_t = _logsumexp_over(xs, ~is_y), _logsumexp_over(xt, ~is_k)
    lse_s, lse_t = torch.logaddexp(xs_y, rest_s), torch.logaddexp(xt_k, rest_t)
    log_bs0, log_bs1 = xs_y - lse_s, rest_s - lse_s
    log_bt0, log_bt1 = xt_k - lse_t, rest_t - lse_t
    bs0, bs1, bt0, bt1 = log_bs0.exp(), log_bs1.exp(), log_bt0.exp(), log_bt1.exp()
    binary = (bt0 * (log_bt0 - log_bs0) + bt1 * (log_bt1 - log_bs1)).mean() * t_bin**2
    # p_j = b_S,1·r_j off the target, so the gradient is (b_S − b_T) spread over [y, the rest]
    grad_bin = torch.where(is_y, bs0 - bt0, (bs1 - bt1) * (xs - rest_s).exp())

    # Masked part: log q = x − lse(x over the kept classes), for the kept classes only.
    ms, mt = z_s / t_mask, z_t / t_mask
    log_qs, log_qt = ms - _logsumexp_over(ms, keep), mt - _logsumexp_over(mt, keep)
    q_t = torch.where(keep, log_qt.exp(), 0.0)
    masked = torch.where(keep, q_t * (log_qt - log_qs), 0.0).sum(dim=1).mean() * t_mask**2
    grad_mask = torch.where(keep, log_qs.exp() - q_t, 0.0)

    grad_bin, grad_mask = grad_bin * (t_bin / batch), grad_mask * (t_mask / batch)
    grads = torch.stack((grad_bin, grad_mask, alpha * grad_bin + beta * grad_mask))
    return alpha * binary + beta * masked, binary, masked, grads


class _Compiled:
    """The compiled kernel, built on first use; compiling is given up per device type on failure."""

    enabled: bool | None = None  # None: follow RLD_COMPILE_LOSSES (default on)
    failed: set[str] = set()
    fn = None
    backend = "inductor"


def use_compiled(enabled: bool | None) -> None:
    """Compile the DKD/RLD kernel with ``torch.compile`` (True), run it eagerly (False), or follow
    the environment variable ``RLD_COMPILE_LOSSES`` (None; compiled unless it is ``0``)."""
    _Compiled.enabled = enabled


@contextmanager
def eager_kernel() -> Iterator[None]:
    """Within the block the kernel runs eagerly (as without a compiler); the setting is restored after."""
    before = _Compiled.enabled
    use_compiled(False)
    try:
        yield
    finally:
        use_compiled(before)


def _compiling_wanted(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return False  # inside a caller's torch.compile: let it trace the plain kernel
    enabled = _Compiled.enabled
    if enabled is None:
        enabled = os.environ.get("RLD_COMPILE_LOSSES", "1") != "0"
    return enabled and device.type not in _Compiled.failed


def _import_cpp_extension_quietly() -> None:
    """Compiling imports torch.utils.cpp_extension, which logs a warning on every machine without
    CUDA; import it first with that logger silenced."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.setLevel(level)


def run_kernel(z_s: Tensor, z_t: Tensor, *rest) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`decoupled_kernel` (same arguments), compiled where possible (see the module doc)."""
    args = (z_s.detach(), z_t.detach(), *rest)
    if _compiling_wanted(z_s.device):
        if _Compiled.fn is None:
            _import_cpp_extension_quietly()
            # dynamic from the first call: one version for every shape and weight (see the module doc)
            _Compiled.fn = torch.compile(decoupled_kernel, backend=_Compiled.backend, fullgraph=True, dynamic=True)
        try:
            if not torch.is_grad_enabled():  # as inside the autograd function
                return _Compiled.fn(*args)
            with torch.no_grad():  # a direct call: the same compiled variant as from the function
                return _Compiled.fn(*args)
        except Exception as exc:  # no C++ compiler, no Triton, an unsupported device, ...
            if z_s.is_cuda and torch.cuda.is_current_stream_capturing():
                raise  # never fall back silently inside a CUDA-graph capture: the capture reports it
            _Compiled.failed.add(z_s.device.type)
            cause = getattr(exc, "inner_exception", None) or exc  # dynamo wraps the backend's error
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            warnings.warn(
                f"rld: could not compile the DKD/RLD loss kernel for {z_s.device.type} ({reason}); "
                "running it eagerly (same values, slower). Set RLD_COMPILE_LOSSES=0 to skip compiling.",
                RuntimeWarning,
                stacklevel=3,
            )
    return decoupled_kernel(*args)


class DecoupledKL(torch.autograd.Function):
    """(α·binary + β·masked, T_b²·mean binary KL, T_m²·mean masked KL) with the student's gradient
    from the kernel.

    z_s, z_t: (B, C) of one dtype; target: (B,) int64; mask: None (DKD), "ge" or "g" (RLD).
    """

    @staticmethod
    def forward(ctx, z_s, z_t, target, mask, t_bin, t_mask, alpha, beta):
        total, binary, masked, grads = run_kernel(z_s, z_t, target, mask, t_bin, t_mask, alpha, beta)
        ctx.save_for_backward(grads)
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not zeros
        return total, binary, masked

    @staticmethod
    def backward(ctx, g_total, g_bin, g_mask):
        (grads,) = ctx.saved_tensors
        grad = None
        for g, term_grad in zip((g_total, g_bin, g_mask), (grads[2], grads[0], grads[1])):
            if g is not None:
                grad = term_grad * g if grad is None else grad.add_(term_grad * g)
        return grad, None, None, None, None, None, None, None
