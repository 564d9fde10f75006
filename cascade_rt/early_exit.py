"""Dynamic early exit on one backbone (the DeeBERT-style baseline), batched and padding-free.

An exit head (pooler + classifier) after every layer but the last; a row leaves after the
first layer whose head is confident enough (max softmax probability >= that layer's
threshold). Exiting rows' hidden states are compacted away on the device, so later layers
run only on the rows left: the same machinery as :class:`cascade_rt.CascadeBert`, applied within one model.
Heads train DeeBERT's way: the backbone and its final head first (ordinary fine-tuning), then
the internal heads on the frozen backbone (:func:`train_exit_heads`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .cascade import CascadeOutput
from .checkpoint import load_tier
from .inputs import prepare_inputs
from .tier import Tier

__all__ = ["ExitHead", "EarlyExitBert", "layer_cls_features", "train_exit_heads"]


class ExitHead(nn.Module):
    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(cls_hidden)))


class EarlyExitBert(nn.Module):
    """A backbone tier plus one :class:`ExitHead` per layer but the last."""

    def __init__(self, backbone: Tier, heads: list[ExitHead], threshold: float | Sequence[float] = 1.0):
        super().__init__()
        if len(heads) != backbone.config.num_hidden_layers - 1:
            raise ValueError(f"need {backbone.config.num_hidden_layers - 1} exit heads, got {len(heads)}")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.threshold = threshold

    @property
    def threshold(self) -> list[float]:
        """One confidence threshold per exit head (a float sets them all)."""
        return list(self._thresholds)

    @threshold.setter
    def threshold(self, value: float | Sequence[float]) -> None:
        n = len(self.heads)
        vals = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(vals) != n:
            raise ValueError(f"need {n} exit thresholds (one per exit head), got {len(vals)}")
        bad = [v for v in vals if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"exit thresholds must be in [0, 1], got {bad}")
        self._thresholds = vals

    @classmethod
    def from_pretrained(cls, path, threshold: float = 1.0) -> "EarlyExitBert":
        path = Path(path)
        backbone = load_tier(path / "backbone")
        meta = json.loads((path / "exit_heads.json").read_text())
        heads = [ExitHead(meta["hidden"], meta["num_labels"]) for _ in range(meta["num_heads"])]
        from safetensors.torch import load_file

        sd = load_file(str(path / "exit_heads.safetensors"))
        nn.ModuleList(heads).load_state_dict(sd, strict=True)
        return cls(backbone, heads, threshold).eval()

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.backbone.save_pretrained(path / "backbone")
        sd = {k: v.detach().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(sd, str(path / "exit_heads.safetensors"))
        cfg = self.backbone.config
        (path / "exit_heads.json").write_text(json.dumps(
            {"hidden": cfg.hidden_size, "num_labels": cfg.num_labels, "num_heads": len(self.heads)}))

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> CascadeOutput:
        """Like :meth:`CascadeBert.forward`; ``exit_tier`` is the exit layer (0-based)."""
        bb = self.backbone
        batch = prepare_inputs(input_ids, attention_mask, token_type_ids, None, None,
                               limits=[bb.config], device=bb.device)
        B, L, dev = batch.num_rows, bb.config.num_hidden_layers, bb.device
        out = CascadeOutput.empty(B, bb.config.num_labels, L, dev)
        if B == 0:
            return out
        out_l, out_t, out_c, rows, toks = (out.logits, out.exit_tier, out.confidence, out.rows_per_tier,
                                           out.tokens_per_tier)
        cu, row_index = batch.cu_seqlens, torch.arange(B, device=dev)
        x = bb.embed(batch.input_ids, batch.token_type_ids, cu)
        for i in range(L):
            rows[i] = row_index.shape[0]
            toks[i] = cu[-1]
            if i == L - 1:  # the last layer for the first tokens only (nothing else is read)
                cls_h = bb.run_layers(i, i + 1, x, cu, batch.max_seqlen, first_tokens=True)
                logits, conf, mask = bb.exit_head(cls_h, 0.0)
                ops.scatter_exits(torch.ones_like(mask), row_index, logits, conf, i, out_l, out_c, out_t)
                break
            x = bb.run_layers(i, i + 1, x, cu, batch.max_seqlen)
            cls_h = Tier.first_tokens(x, cu)
            h = self.heads[i]
            logits, conf, mask = ops.exit_head(cls_h, h.pooler.weight, h.pooler.bias,
                                               h.classifier.weight, h.classifier.bias, self._thresholds[i])
            ops.scatter_exits(mask, row_index, logits, conf, i, out_l, out_c, out_t)
            x, cu, local, n_kept = ops.compact(mask, x, cu)
            n_rows, n_tok = torch.stack([n_kept.to(torch.int64), cu[-1].to(torch.int64)]).tolist()
            if n_rows == 0:
                break
            row_index = row_index[local[:n_rows]]
            x, cu = x[:n_tok], cu[: n_rows + 1]
        return out


@torch.no_grad()
def layer_cls_features(backbone: Tier, data, batch_size: int = 128, layers: int | None = None) -> torch.Tensor:
    """First-token hidden state after every layer: (N, num_layers, hidden) float32; with
    ``layers``, after the first ``layers`` layers only (the rest are not run)."""
    from .train import batches, collate

    L, Hd = backbone.config.num_hidden_layers, backbone.config.hidden_size
    if layers is not None:
        if not 1 <= layers <= L:
            raise ValueError(f"layers must be in 1..{L}, got {layers}")
        L = layers
    feats = torch.zeros(len(data), L, Hd)
    for idx in batches(data.lengths, batch_size, None):
        b = collate(data, idx)
        pb = prepare_inputs(b["input_ids"], b["attention_mask"], b["token_type_ids"], None, None,
                            limits=[backbone.config], device=backbone.device)
        x = backbone.embed(pb.input_ids, pb.token_type_ids, pb.cu_seqlens)
        for i in range(L):
            x = backbone.run_layers(i, i + 1, x, pb.cu_seqlens, pb.max_seqlen)
            feats[torch.tensor(idx), i] = Tier.first_tokens(x, pb.cu_seqlens).float()
    return feats


def train_exit_heads(backbone: Tier, data, epochs: int = 3, lr: float = 1e-3, batch_size: int = 64,
                     seed: int = 0, features: torch.Tensor | None = None) -> list[ExitHead]:
    """Internal heads on the frozen backbone, each initialised from the final pooler/classifier."""
    torch.manual_seed(seed)
    feats = layer_cls_features(backbone, data) if features is None else features
    labels = torch.tensor(data.labels)
    cfg = backbone.config
    heads = []
    for i in range(cfg.num_hidden_layers - 1):
        h = ExitHead(cfg.hidden_size, cfg.num_labels)
        h.pooler.load_state_dict(backbone.bert.pooler.dense.state_dict())
        h.classifier.load_state_dict(backbone.classifier.state_dict())
        h = h.float()
        opt = torch.optim.AdamW(h.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed + i)
        for _ in range(epochs):
            perm = torch.randperm(len(labels), generator=g)
            for s in range(0, len(perm), batch_size):
                idx = perm[s:s + batch_size]
                loss = F.cross_entropy(h(feats[idx, i]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append(h.eval())
    return heads
