"""Cross-entropy over the vocabulary in chunks of rows, fused with the output layer: the float32 logits of
a whole batch (batch × time × vocab: 1 GiB at 8 × 1024 × 32k) never exist, only one chunk's at a time.

The loss is the weighted sum Σ_i w_i · NLL_i (w: the mask, 0 for padding). Its gradient with respect to
each chunk's logits, (softmax − onehot) · w_i, is known as soon as the chunk's logits are, so the forward
pass turns it into the gradients of the hidden states and of the output weight right away and keeps only
those (the size of the hidden states and of the weight); the backward pass scales them by the upstream
gradient. No matrix product is computed twice, unlike recomputing each chunk's logits in the backward.
"""

from __future__ import annotations

import torch

# Rows per chunk: 2^26 float32 logits (256 MiB) per chunk whatever the vocabulary, at least 128 rows.
CHUNK_LOGITS = 1 << 26


def chunk_rows(vocab_size: int) -> int:
    return max(128, CHUNK_LOGITS // vocab_size)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, token_weights: torch.Tensor,
                rows_per_chunk: int) -> torch.Tensor:
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        compute = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
            hidden.device.type) else hidden.dtype
        h_all, w = hidden.to(compute), weight.to(compute)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # float32 until the backward pass scales them: the scale (1 / the batch's tokens) is not a power of two
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        for start in range(0, hidden.shape[0], rows_per_chunk):
            end = start + rows_per_chunk
            h, t, tw = h_all[start:end], targets[start:end], token_weights[start:end]
            logits = torch.mm(h, w.t()).float()  # (chunk, vocab): the only float32 logits there are
            lse = torch.logsumexp(logits, dim=-1)
            nll = lse - logits.gather(1, t[:, None]).squeeze(1)
            total += (nll * tw).sum()
            if want_hidden or want_weight:
                grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad_logits.scatter_add_(1, t[:, None], -torch.ones_like(lse[:, None]))
                grad_logits = (grad_logits * tw[:, None]).to(compute)
                if want_hidden:
                    grad_hidden[start:end] = torch.mm(grad_logits, w)
                if want_weight:
                    grad_weight += torch.mm(grad_logits.t(), h).float()
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.which = (want_hidden, want_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        saved = list(ctx.saved_tensors)
        want_hidden, want_weight = ctx.which
        grad_hidden = (saved.pop(0) * upstream).to(ctx.dtypes[0]) if want_hidden else None
        grad_weight = (saved.pop(0) * upstream).to(ctx.dtypes[1]) if want_weight else None
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         token_weights: torch.Tensor, rows_per_chunk: int | None = None) -> torch.Tensor:
    """Σ token_weights · NLL(targets | hidden @ weightᵀ), float32; hidden (..., d), weight (vocab, d),
    targets and token_weights (...)."""
    if not torch.is_grad_enabled():  # evaluation: no gradient is computed in the forward pass either
        hidden, weight = hidden.detach(), weight.detach()
    return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                    token_weights.reshape(-1).float(), rows_per_chunk or chunk_rows(weight.shape[0]))
