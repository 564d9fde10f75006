"""A whole cascade forward captured in one CUDA graph, replayed on new batches.

The sync-free cascade (``model.sync_free = True``) launches the same kernels with the same
sizes whatever the batch holds: every size on the host is an upper bound and the live row
and token counts stay in device memory. So a forward on a fixed padded shape
``(max_batch, max_seqlen)`` can be captured once and replayed with new inputs copied into
the captured input buffers::

    graph = capture(model, max_batch=64, max_seqlen=128)
    out = graph(input_ids, attention_mask)          # any (B, S) with B <= 64, S <= 128

Rows past ``B`` are filled with one-token dummy rows (cheap: one token each) and their
results dropped; columns past ``S`` are padding. Outputs are in input row order, exactly as
``model(input_ids, attention_mask)`` gives them.

What a graph fixes at capture: the thresholds and the pool weight (changing
``model.thresholds`` or ``model.pool_weight`` afterwards is an error: capture again), the
weights' storage (update weights in place, e.g. with ``load_state_dict``: a replay then
computes with the new values, the fused query/key/value weight included, since the three
parameters view it; never re-assign or move them), and the device (capture and replay run under
it, whichever device is current). Input values are checked on the device
(``torch._assert_async``); a failed check aborts the CUDA context, as any device assert does.

On a CPU model the same object runs the forward eagerly on the same fixed-shape buffers
(nothing to capture), which keeps the code path testable without a GPU.
"""
from __future__ import annotations

import torch

from .cascade import CascadeBert, CascadeOutput
from .inputs import InputError

__all__ = ["CapturedCascade", "capture"]


class CapturedCascade:
    """A cascade forward for padded input up to ``(max_batch, max_seqlen)``, as a CUDA graph.

    Args:
        model: the cascade; its ``sync_free`` flag is switched on (and left on).
        max_batch: largest batch (rows) a call may pass.
        max_seqlen: largest padded width a call may pass (<= every tier's
            ``max_position_embeddings``).
        warmup: eager forwards on a side stream before capture (kernel compilation, caches).
        use_graph: capture a CUDA graph (default: when the model is on CUDA).
        pool: a graph memory pool to share with other captures (``torch.cuda.graph_pool_handle()``).
    """

    def __init__(self, model: CascadeBert, max_batch: int, max_seqlen: int, *, warmup: int = 2,
                 use_graph: bool | None = None, pool=None):
        if max_batch < 1 or max_seqlen < 1:
            raise ValueError(f"max_batch and max_seqlen must be >= 1, got {max_batch} and {max_seqlen}")
        max_pos = min(t.config.max_position_embeddings for t in model.tiers)
        if max_seqlen > max_pos:
            raise ValueError(
                f"max_seqlen {max_seqlen} exceeds max_position_embeddings {max_pos} of the model"
            )
        self.model = model
        self.max_batch, self.max_seqlen = int(max_batch), int(max_seqlen)
        self.device = model.device
        self.use_graph = (self.device.type == "cuda") if use_graph is None else bool(use_graph)
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model; this one is on {self.device}")
        self.thresholds = list(model.thresholds)
        self.pool_weight = model.pool_weight
        model.sync_free = True
        shape = (self.max_batch, self.max_seqlen)
        #: the captured inputs: (max_batch, max_seqlen) int64 each, owned by this object
        self.input_ids = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.attention_mask = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.token_type_ids = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self._fill_dummy(0)
        self.graph = None
        self._out: CascadeOutput | None = None
        if self.use_graph:
            self._capture(warmup, pool)

    # -- capture / replay ------------------------------------------------------------------
    def _forward(self) -> CascadeOutput:
        return self.model(self.input_ids, self.attention_mask, self.token_type_ids)

    def _capture(self, warmup: int, pool) -> None:
        # the graph records on the current device's streams: make that the model's device
        with torch.cuda.device(self.device):
            self._capture_on_device(warmup, pool)

    def _capture_on_device(self, warmup: int, pool) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self._forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self._out = self._forward()

    def _fill_dummy(self, rows_from: int) -> None:
        """Rows ``rows_from:`` become one-token rows (id 0, type 0); the rest is padding."""
        self.input_ids.zero_()
        self.token_type_ids.zero_()
        self.attention_mask.zero_()
        self.attention_mask[rows_from:, 0] = 1

    def _check(self, name: str, t: torch.Tensor | None, shape=None) -> None:
        if t is None:
            return
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            if not (name == "attention_mask" and t.dtype == torch.bool):
                raise InputError(f"{name} must be an integer tensor, got {t.dtype}")
        if t.device != self.device:
            raise InputError(f"{name} is on {t.device} but the captured model is on {self.device}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise InputError(f"{name} shape {tuple(t.shape)} does not match input_ids shape {tuple(shape)}")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, *, clone: bool = True) -> CascadeOutput:
        """Classify a right-padded batch ``input_ids: (B, S)`` with ``B <= max_batch``,
        ``S <= max_seqlen`` (and ``attention_mask``, ``token_type_ids``: (B, S), optional).

        Returns a :class:`CascadeOutput` for the B rows in input order. With ``clone=False``
        its tensors are views of the graph's output buffers, overwritten by the next call.
        """
        if list(self.model.thresholds) != self.thresholds:
            raise RuntimeError(
                f"the model's thresholds changed since capture ({self.thresholds} -> "
                f"{list(self.model.thresholds)}); capture the cascade again"
            )
        if self.model.pool_weight != self.pool_weight:
            raise RuntimeError(f"the model's pool_weight changed since capture ({self.pool_weight} -> "
                               f"{self.model.pool_weight}); capture the cascade again")
        self._check("input_ids", input_ids)
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        self._check("attention_mask", attention_mask, input_ids.shape)
        self._check("token_type_ids", token_type_ids, input_ids.shape)
        B, S = input_ids.shape
        if B > self.max_batch or S > self.max_seqlen:
            raise InputError(
                f"input is ({B}, {S}) but the cascade was captured for at most "
                f"({self.max_batch}, {self.max_seqlen}); capture a larger shape or split the batch"
            )
        if B == 0:
            return self.model(input_ids, attention_mask, token_type_ids)
        self._fill_dummy(B)
        self.input_ids[:B, :S].copy_(input_ids)
        if attention_mask is None:
            self.attention_mask[:B, :S] = 1
        else:
            self.attention_mask[:B, :S].copy_(attention_mask)
        if token_type_ids is not None:
            self.token_type_ids[:B, :S].copy_(token_type_ids)
        if self.graph is not None:
            with torch.cuda.device(self.device):  # replay on the model's device's current stream
                self.graph.replay()
            out = self._out
        else:
            out = self._forward()
        logits, exit_tier, conf = out.logits[:B], out.exit_tier[:B], out.confidence[:B]
        # per-tier counts of the caller's rows only (the dummy rows ran too), on the device
        n_tiers = len(self.model.tiers)
        reached = exit_tier[None, :] >= torch.arange(n_tiers, device=self.device)[:, None]  # (tiers, B)
        lens = self.attention_mask[:B].sum(1)
        rows = reached.sum(1)
        tokens = (reached * lens[None, :]).sum(1)
        if clone:
            logits, exit_tier, conf = logits.clone(), exit_tier.clone(), conf.clone()
        return CascadeOutput(logits, exit_tier, conf, rows, tokens)


def capture(model: CascadeBert, max_batch: int, max_seqlen: int, **kwargs) -> CapturedCascade:
    """Capture ``model``'s forward for padded input up to ``(max_batch, max_seqlen)``;
    see :class:`CapturedCascade`."""
    return CapturedCascade(model, max_batch, max_seqlen, **kwargs)
