"""Sparse linear kernels (placeholder: pure torch; replaced by the measured kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_matmul(vals: torch.Tensor, wt: torch.Tensor, idx: torch.Tensor, bias=None) -> torch.Tensor:
    """``y[N, d_out] = vals[N, k] @ wt[idx]`` (+ bias), reading only the rows ``idx`` of ``wt``."""
    if vals.shape[0] == 1 and wt.device.type == "cpu":
        y = F.embedding_bag(idx, wt, torch.zeros(1, dtype=torch.long, device=idx.device), mode="sum",
                            per_sample_weights=vals[0])
    else:
        y = vals @ wt.index_select(0, idx)
    return y if bias is None else y + bias


def gather_rows_matmul(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, bias=None) -> torch.Tensor:
    """``y[N, k] = x[N, d_in] @ w[idx].T`` (+ ``bias[idx]``): only the output rows ``idx``."""
    y = x @ w.index_select(0, idx).t()
    return y if bias is None else y + bias.index_select(0, idx)
