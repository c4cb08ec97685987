"""One fused pass for the decoupled losses (DKD, RLD) with a closed-form backward.

Both losses are a *binary* KL (class k_T of the teacher against the rest, class k_S of the
student against the rest) and a *masked* KL (softmaxes without the removed classes). Autograd
through the composite form records ~40 small operations; this function computes the two
per-batch terms from stacked (student, teacher) log-softmaxes and returns the student's gradient
in closed form:

    ∂(T_b²·KL_bin)/∂z_S,j  = T_b·(p_j − b_T,0·[j = k_S] − b_T,1·[j ≠ k_S]·p_j / (1 − p_{k_S}))
    ∂(T_m²·KL_mask)/∂z_S,j = T_m·(p̃_S,j − p̃_T,j)   (both p̃ are 0 at removed classes)

(p = softmax(z_S/T_b), b_T the teacher's binary distribution, p̃ the masked softmaxes at T_m).
Masks are float (1 = removed) and applied arithmetically (``lerp``): on CPU that is several times faster
than boolean indexing. Removed classes are pushed ``GAP`` nats below the row's minimum, as in
:func:`rld.losses._common.remove_classes`. The function is used when the teacher's logits need
no gradient (distillation); otherwise the composite form in :mod:`rld.losses.decoupled`, which is
also the reference the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rld.losses._common import _GAP


class DecoupledKL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        z_s: Tensor,
        z_t: Tensor,
        s_idx: Tensor,
        t_idx: Tensor,
        removed: Tensor,
        t_bin: float,
        t_mask: float,
    ) -> tuple[Tensor, Tensor]:
        # Binary part: [log p_k, log(1 − p_k)] for k = k_S (student, row 0) and k = k_T (teacher, row 1).
        # log(1 − p_k) = log p_j − log p_j^(−k) for any j ≠ k, with p^(−k) the softmax without class k:
        # two fused log-softmaxes instead of a (much slower) logsumexp over the other classes.
        x = torch.stack([z_s, z_t]) / t_bin  # (2, B, C)
        k = torch.stack([s_idx, t_idx])[..., None]  # (2, B, 1)
        j = (k + 1) % x.shape[-1]
        lp = F.log_softmax(x, dim=-1)
        lp_rest = F.log_softmax(x.scatter(2, k, float("-inf")), dim=-1)
        log_rest = lp.gather(2, j) - lp_rest.gather(2, j)
        bins = torch.cat([lp.gather(2, k), log_rest], dim=-1)  # (2, B, 2)
        b_t = bins[1].exp()
        binary = (b_t * (bins[1] - bins[0])).sum(dim=-1)

        # Masked part: the removed classes get probability exactly 0 in both softmaxes.
        xm = x if t_mask == t_bin else torch.stack([z_s, z_t]) / t_mask
        xm = xm.lerp(xm.amin(dim=-1, keepdim=True) - _GAP, removed)
        lq = F.log_softmax(xm, dim=-1)
        q_t = F.softmax(xm[1], dim=-1)
        masked = (q_t * (lq[1] - lq[0])).sum(dim=-1)

        ctx.save_for_backward(x[0], s_idx, b_t, xm[0], q_t)
        ctx.t_bin, ctx.t_mask = t_bin, t_mask
        return binary.mean() * t_bin**2, masked.mean() * t_mask**2

    @staticmethod
    def backward(ctx, g_bin: Tensor, g_mask: Tensor):
        x_s, s_idx, b_t, xm_s, q_t = ctx.saved_tensors
        k = s_idx[:, None]
        batch = x_s.shape[0]
        rest = F.softmax(x_s.scatter(1, k, float("-inf")), dim=1)  # p_j / (1 − p_k), 0 at k
        d_bin = (F.softmax(x_s, dim=1) - b_t[:, 1:] * rest).scatter_add(1, k, -b_t[:, :1])
        d_mask = F.softmax(xm_s, dim=1) - q_t
        grad = d_bin * (g_bin * ctx.t_bin / batch) + d_mask * (g_mask * ctx.t_mask / batch)
        return grad, None, None, None, None, None, None
