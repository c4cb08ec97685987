"""The decoupled losses (DKD, RLD) in one autograd function with a closed-form student gradient.

Both losses are a *binary* KL (class k_T of the teacher against the rest, class k_S = target of
the student against the rest) and a *masked* KL (softmaxes without the removed classes). Autograd
through the composite form records ~40 small operations; here the forward computes both terms
directly and the backward is

    ∂(T_b²·KL_bin)/∂z_S,j  = T_b·(p_j − b_T,0·[j = y] − b_T,1·r_j),  r = softmax without class y
    ∂(T_m²·KL_mask)/∂z_S,j = T_m·(q_S,j − q_T,j),                     q = softmax over the kept classes

(p = softmax(z_S/T_b), b_T = [p_T(k_T), 1 − p_T(k_T)] the teacher's binary distribution).

Two forwards:

* fast (CPU): one softmax per model and temperature; 1 − p_k and the kept mass are *sums of the
  other probabilities* (never 1 − p_k by subtraction), q = p·keep / mass. Valid while those sums
  do not underflow — one number read on the host decides — else:
* log space (CUDA, and CPU rows that underflow): three softmaxes of the stacked (student,
  teacher) logits — full, without class k, without the mask — with removed classes pushed
  ``GAP`` nats below the row's minimum (probability exactly 0, everything finite).

Log-normalisers come without a logsumexp pass: for q = softmax(x), log Σ exp(x) =
max(x) − log(max(q)), exact and well conditioned (max q ≥ 1/C). The teacher's class k_T for RLD
is its argmax; other maxima tied with it stay in 1 − p_max. The function serves a teacher whose
logits need no gradient; otherwise the composite form in :mod:`rld.losses.decoupled` — also the
reference the tests compare both forwards with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import _GAP


def _softmax_without(x: Tensor, drop: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax over the classes not dropped: (q, log-normaliser (…, 1), the shifted logits)."""
    floor = x.amin(dim=-1, keepdim=True) - _GAP
    xd = torch.lerp(x, floor.expand_as(x), drop)
    q = F.softmax(xd, dim=-1)
    return q, _log_norm(xd, q), xd


def _log_norm(x: Tensor, q: Tensor) -> Tensor:
    """log Σ exp(x) over the last axis from q = softmax(x), keepdim."""
    return x.amax(dim=-1, keepdim=True) - q.amax(dim=-1, keepdim=True).log()


def _tiny(dtype: torch.dtype) -> float:
    return 1e-30 if dtype == torch.float32 else 1e-300


def _dot(a: Tensor, b: Tensor, scratch: Tensor) -> Tensor:
    """Row-wise Σ_j a_j·b_j, (B, C) × (B, C) → (B, 1), through a reused (B, C) scratch buffer."""
    return torch.mul(a, b, out=scratch).sum(dim=1, keepdim=True)


def _rest_mass(p: Tensor, k: Tensor, p_k: Tensor) -> Tensor:
    """Σ_{j≠k} p_j per row, (B, 1): summed over the other classes (never 1 − p_k), by zeroing
    p_k in place for the sum and restoring it — no (B, C) temporary."""
    rest = p.scatter_(1, k, 0.0).sum(dim=1, keepdim=True)
    p.scatter_(1, k, p_k)
    return rest


def _fast_forward(z_s, z_t, target, keep, teacher_on_target, t_bin, t_mask):
    """One softmax per model and temperature; row sums of probabilities instead of extra softmaxes.

    ``keep``: (B, C) float, 1 = kept by the mask, or None for "all but the target" (DKD).
    Valid while the probability sums it takes logs of (the rest 1 − p_k, summed over the other
    classes, and the kept mass) do not underflow; returns None otherwise, and the caller falls back
    to :func:`_robust_forward`. Written with few (B, C) temporaries and in-place updates: allocating
    large temporaries costs as much as the arithmetic on CPU.
    """
    y = target[:, None]
    xs_b, xt_b = z_s / t_bin, z_t / t_bin
    ps_b, pt_b = F.softmax(xs_b, dim=1), F.softmax(xt_b, dim=1)
    scratch = torch.empty_like(ps_b)
    # Binary part. Student: k = target; teacher: k = target (DKD) or its argmax (RLD; other maxima
    # tied with it stay in the rest).
    p_y = ps_b.gather(1, y)
    rest_s = _rest_mass(ps_b, y, p_y)
    log_pk_s = xs_b.gather(1, y) - _log_norm(xs_b, ps_b)
    if teacher_on_target:
        pk_t = pt_b.gather(1, y)
        rest_t = _rest_mass(pt_b, y, pk_t)
    else:
        pk_t, top = pt_b.max(dim=1, keepdim=True)
        rest_t = _rest_mass(pt_b, top, pk_t)
    # Masked part at t_mask: kept mass P and q = p·keep / P.
    if t_mask == t_bin:
        xs_m, xt_m, ps_m, pt_m = xs_b, xt_b, ps_b, pt_b
    else:
        xs_m, xt_m = z_s / t_mask, z_t / t_mask
        ps_m, pt_m = F.softmax(xs_m, dim=1), F.softmax(xt_m, dim=1)
    if keep is None:  # DKD: everything but the target is kept
        keep = torch.ones_like(z_s).scatter_(1, y, 0.0)
        same = t_mask == t_bin
        mass_s = rest_s if same else _rest_mass(ps_m, y, ps_m.gather(1, y))
        mass_t = rest_t if same and teacher_on_target else _rest_mass(pt_m, y, pt_m.gather(1, y))
        kept_any = torch.ones_like(mass_s)
    else:
        mass_s, mass_t = _dot(ps_m, keep, scratch), _dot(pt_m, keep, scratch)
        kept_any = keep.amax(dim=1, keepdim=True)  # 0 for a row with every class masked
        mass_s = torch.where(kept_any > 0, mass_s, 1.0)
        mass_t = torch.where(kept_any > 0, mass_t, 1.0)
    if float(torch.cat([rest_s, rest_t, mass_s, mass_t]).min()) < (1e-30 if z_s.dtype == torch.float32 else 1e-300):
        return None
    b_t = torch.cat([pk_t, rest_t], dim=1)
    log_b_s = torch.cat([log_pk_s, rest_s.log()], dim=1)
    binary = (torch.xlogy(b_t, b_t) - b_t * log_b_s).sum(dim=1)  # 0·log 0 = 0 for an underflowed p_T(k)
    log_norm_s = _log_norm(xs_m, ps_m) + mass_s.log()
    log_norm_t = _log_norm(xt_m, pt_m) + mass_t.log()
    q_t = pt_m.mul_(keep).div_(mass_t)  # in place: the teacher's softmax is not needed any more
    masked = (_dot(q_t, xt_m, scratch) - _dot(q_t, xs_m, scratch) - log_norm_t + log_norm_s) * kept_any
    saved = (ps_b, ps_m, keep, q_t, target, b_t, rest_s, mass_s)
    return binary.mean() * t_bin**2, masked.mean() * t_mask**2, saved


def _fast_backward(saved, g_bin, g_mask, t_bin, t_mask):
    ps_b, ps_m, keep, q_t, target, b_t, rest_s, mass_s = saved
    y = target[:, None]
    batch = ps_b.shape[0]
    c_b, c_m = g_bin * t_bin / batch, g_mask * t_mask / batch
    b0, b1 = b_t[:, :1], b_t[:, 1:]
    # d_bin = p − b1·p·[j≠y]/rest − b0·[j=y];  d_mask = keep·p_m/mass − q_t
    row = c_b * (1.0 - b1 / rest_s)
    if ps_m is ps_b:
        grad = (keep * (c_m / mass_s)).add_(row).mul_(ps_b)
    else:
        grad = (keep * (c_m / mass_s)).mul_(ps_m).add_(ps_b * row)
    grad.addcmul_(q_t, c_m, value=-1.0)
    # at j = y the binary term is p_y − b0, not p_y·(1 − b1/rest)
    p_y = ps_b.gather(1, y)
    return grad.scatter_add_(1, y, c_b * (b1 * p_y / rest_s - b0))


def _robust_forward(z_s, z_t, target, removed, teacher_on_target, t_bin, t_mask):
    """Log-space version: three softmaxes of the stacked logits (full, without k, without the mask)."""
    y = target[:, None]
    x = torch.stack([z_s, z_t]) / t_bin  # (2, B, C): row 0 student, row 1 teacher
    p = F.softmax(x, dim=-1)
    log_norm = _log_norm(x, p)
    one_hot = torch.zeros_like(z_s).scatter_(1, y, 1.0)

    # Binary part: [log p_k, log(1 − p_k)], k = target for the student (and DKD's teacher),
    # k = argmax for RLD's teacher. log(1 − p_k) = lse(x without k) − lse(x).
    if teacher_on_target:
        drop_k = one_hot
        log_pk = torch.stack([z_s, z_t]).gather(2, y.expand(2, -1, -1)) / t_bin - log_norm
    else:
        is_max = (x[1] - x[1].amax(dim=-1, keepdim=True)).sign_().add_(1.0)  # 1 at the max (and ties)
        drop_k = torch.stack([one_hot, is_max])
        log_pk = torch.stack([x[0].gather(1, y), x[1].amax(dim=-1, keepdim=True)]) - log_norm
    rest, log_norm_rest, _ = _softmax_without(x, drop_k)
    log_rest = log_norm_rest - log_norm
    if not teacher_on_target:  # other maxima tied with the teacher's argmax belong to 1 − p_max
        ties = is_max.sum(dim=-1, keepdim=True) - 1.0
        log_rest = torch.stack([log_rest[0], torch.logaddexp(log_rest[1], ties.log() + log_pk[1])])
    b = torch.cat([log_pk, log_rest], dim=-1)  # (2, B, 2)
    b_t = b[1].exp()
    binary = (b_t * (b[1] - b[0])).sum(dim=-1)

    # Masked part: softmaxes over the kept classes; a row with nothing kept contributes 0.
    if removed is None and teacher_on_target and t_mask == t_bin:
        q, log_norm_q, xq = rest, log_norm_rest, None  # DKD: the mask is {target}: reuse
    else:
        xm = x if t_mask == t_bin else torch.stack([z_s, z_t]) / t_mask
        q, log_norm_q, xq = _softmax_without(xm, one_hot if removed is None else removed)
    if xq is None:
        floor = x.amin(dim=-1, keepdim=True) - _GAP
        xq = torch.lerp(x, floor.expand_as(x), one_hot)
    kept_any = (one_hot if removed is None else removed).sum(dim=-1) < z_s.shape[1]
    masked = (q[1] * (xq[1] - xq[0])).sum(dim=-1) - log_norm_q[1, :, 0] + log_norm_q[0, :, 0]
    masked = masked * kept_any

    saved = (p[0], rest[0], b_t, one_hot, q[0], q[1])
    return binary.mean() * t_bin**2, masked.mean() * t_mask**2, saved


def _robust_backward(saved, g_bin, g_mask, t_bin, t_mask):
    p_s, rest_s, b_t, one_hot, q_s, q_t = saved
    batch = p_s.shape[0]
    d_bin = p_s - b_t[:, 1:] * rest_s - b_t[:, :1] * one_hot
    return d_bin * (g_bin * t_bin / batch) + (q_s - q_t) * (g_mask * t_mask / batch)


class DecoupledKL(torch.autograd.Function):
    """(T_b²·mean binary KL, T_m²·mean masked KL) with the student's gradient in closed form.

    z_s, z_t: (B, C); target: (B,); keep: (B, C) float (1 = kept by the mask, 0 = removed) or None
    for "all but the target";
    teacher_on_target: the teacher's binary is on the target (DKD) rather than its argmax (RLD).
    """

    @staticmethod
    def forward(ctx, z_s, z_t, target, keep, teacher_on_target, t_bin, t_mask):
        # The fast path reads one number on the host to choose; on CUDA that would be a sync per
        # step (and cannot be captured in a graph), so CUDA tensors take the log-space path.
        out = None if z_s.is_cuda else _fast_forward(z_s, z_t, target, keep, teacher_on_target, t_bin, t_mask)
        ctx.fast = out is not None
        if out is None:
            removed = None if keep is None else 1.0 - keep
            out = _robust_forward(z_s, z_t, target, removed, teacher_on_target, t_bin, t_mask)
        binary, masked, saved = out
        ctx.save_for_backward(*saved)
        ctx.t_bin, ctx.t_mask = t_bin, t_mask
        ctx.same_t = t_bin == t_mask
        return binary, masked

    @staticmethod
    def backward(ctx, g_bin, g_mask):
        saved = list(ctx.saved_tensors)
        if ctx.fast:
            if ctx.same_t:
                saved[1] = saved[0]  # the same softmax at both temperatures (identity lost in saving)
            grad = _fast_backward(saved, g_bin, g_mask, ctx.t_bin, ctx.t_mask)
        else:
            grad = _robust_backward(saved, g_bin, g_mask, ctx.t_bin, ctx.t_mask)
        return grad, None, None, None, None, None, None
