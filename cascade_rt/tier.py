"""One padding-free BERT-family sequence classifier (a cascade tier).

The encoder here is shared by every family (BERT, DistilBERT, RoBERTa / XLM-R / CamemBERT,
ELECTRA); its modules carry ``transformers.BertForSequenceClassification``'s names, and the
family (:mod:`cascade_rt.models`, picked by ``config.model_type``) maps them to its own Hugging
Face names at the state-dict boundary, so ``tier.state_dict()`` is the family's Hugging Face
state dict and HF checkpoints load with strict key matching (see :mod:`cascade_rt.checkpoint`).
The family also gives the embedding rule (position numbering, token types, ELECTRA's
projection) and the exit head's activation. The tier never pads: it runs on packed tokens
``(T,)`` with ``cu_seqlens``; padded ``(B, S)`` input is packed on the device first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import backends, ops
from .config import TierConfig
from .dense import dense as dense_layer
from .dense import pack as pack_weight
from .dense import packing, panel_enabled, panel_pack
from .inputs import PackedBatch, prepare_inputs
from .models.base import positions_from_zero
from .reference import ENCODER_WEIGHTS_PER_LAYER, token_row_ids_ref

__all__ = ["Tier"]


class _Embeddings(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        width = cfg.embedding_size or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, width, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, width)
        # families without token types (DistilBERT) have no table
        self.token_type_embeddings = (nn.Embedding(cfg.type_vocab_size, width)
                                      if cfg.family.token_types else None)
        self.LayerNorm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class _DenseLayerNorm(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _Attention(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.add_module("self", _SelfAttention(cfg))
        self.output = _DenseLayerNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)


class _Layer(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = _DenseLayerNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)
        self._qkv_fused: tuple[torch.Tensor, torch.Tensor] | None = None

    def qkv_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Query/key/value weights fused: (3H, H) weight and (3H,) bias, one storage each.

        The first call copies the three projections into one weight and one bias and makes
        each parameter a view of its slice (``param.data`` points into the fused storage).
        In-place updates of the parameters (``load_state_dict``, ``p.copy_``, ``p.data.mul_``)
        then land in the fused tensors themselves: nothing is copied per call, and a CUDA
        graph that captured them replays with the updated weights. Re-assigning a parameter
        or moving the module (``.to()``) breaks the views; the next call fuses again (a new
        storage, which a graph captured before does not see).
        """
        sa = getattr(self.attention, "self")
        ws = (sa.query.weight, sa.key.weight, sa.value.weight)
        bs = (sa.query.bias, sa.key.bias, sa.value.bias)
        if torch.compiler.is_compiling():
            # data pointers cannot be traced; the compiler may hoist these weight-sized copies
            return torch.cat(ws, 0), torch.cat(bs, 0)
        fused = self._qkv_fused
        if fused is None or not (_views_of(fused[0], ws) and _views_of(fused[1], bs)):
            # never inference tensors (a first call under inference_mode): the parameters
            # become views of these and must stay usable, and updatable, outside it
            with torch.inference_mode(False), torch.no_grad():
                fused = (torch.cat([p.detach() for p in ws], 0), torch.cat([p.detach() for p in bs], 0))
            for whole, parts in zip(fused, (ws, bs)):
                for p, view in zip(parts, whole.split([p.shape[0] for p in parts], 0)):
                    p.data = view
            self._qkv_fused = fused
        return fused

    def _apply(self, fn, recurse=True):
        # .to()/.half()/.cuda() give each parameter its own storage: drop the old fused one
        self._qkv_fused = None
        return super()._apply(fn, recurse)


def _positions_in_rows_cpu(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
    """Each token's position inside its row, (T,) int64, computed on the host (NumPy: a few
    microseconds where the device-side way takes several torch ops); ``None`` when there are
    dead slots (the caller's general path handles them)."""
    cu = cu_seqlens.numpy()
    if int(cu[-1]) != num_tokens:
        return None
    return torch.from_numpy(np.arange(num_tokens, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), np.diff(cu)))


#: parameters registered on any module so far (a module-level hook counts them): a cached list of
#: a tier's parameter objects is stale once it moves, e.g. after ``layer.weight = nn.Parameter(...)``
_param_registrations = [0]


def _count_registration(module, name, param):
    _param_registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


def _views_of(whole: torch.Tensor, parts) -> bool:
    """Whether ``parts`` are, in order, the contiguous row slices that make up ``whole``."""
    ptr, step = whole.data_ptr(), whole.element_size()
    for p in parts:
        if (p.data_ptr() != ptr or p.dtype != whole.dtype or p.device != whole.device
                or not p.is_contiguous()):
            return False
        ptr += p.numel() * step
    return ptr == whole.data_ptr() + whole.numel() * step


class _Encoder(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class _Bert(nn.Module):
    def __init__(self, cfg: TierConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        # ELECTRA: embeddings narrower than the encoder are projected after their LayerNorm
        self.embeddings_project = (nn.Linear(cfg.embedding_size, cfg.hidden_size)
                                   if cfg.embedding_size else None)
        self.encoder = _Encoder(cfg)
        # the head's first dense layer: BERT's pooler, RoBERTa's / ELECTRA's classifier.dense,
        # DistilBERT's pre_classifier (the family renames it)
        self.pooler = _Pooler(cfg)


#: HF ``hidden_act`` -> the activation name :func:`cascade_rt.ops.linear` fuses.
_LINEAR_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "gelu_fast": "gelu_tanh", "relu": "relu"}


def _to_hf_names(module: "Tier", state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: internal names -> the family's Hugging Face names, in place."""
    keys = module.family.keys
    renames = {k: prefix + keys.to_hf(k[len(prefix):]) for k in state_dict if k.startswith(prefix)}
    _rename(state_dict, renames)


def _from_hf_names(module: "Tier", state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the family's Hugging Face names -> internal names, in place;
    keys that are not the family's stay as they are (strict loading reports them)."""
    keys = module.family.keys
    renames = {}
    for k in state_dict:
        if k.startswith(prefix):
            internal = keys.from_hf(k[len(prefix):])
            if internal is not None:
                renames[k] = prefix + internal
    _rename(state_dict, renames)


def _rename(state_dict, renames: dict) -> None:
    renames = {k: v for k, v in renames.items() if k != v}
    values = {renames[k]: state_dict.pop(k) for k in list(renames)}
    state_dict.update(values)


def _signature(params) -> tuple:
    """What changes when any of ``params`` is updated in place (its version) or gets new
    storage (its address): the key under which packed copies of them are kept."""
    return tuple([v for p in params for v in (p._version, p.data_ptr())])


class _CpuPlan:
    """A tier's CPU exact path (embeddings, encoder, exit head) with every per-call decision
    made once: the backend (native for all three ops, checked when built), the tensors
    (fetched once instead of through ``nn.Module`` attribute chains), the position rule.

    At batch 1 the encoder's GEMMs stream the weights through the caches, so the Python
    between two forwards runs cold and each dispatch or attribute chain costs tens of
    microseconds; this keeps a forward to one input check, one weight signature and three op
    calls. It holds the parameter objects, so in-place updates are seen; the tier drops it on
    ``.to()`` and rebuilds it when a parameter is re-assigned anywhere or the forced backend
    changes (``Tier._cpu_plan``).
    """

    def __init__(self, tier: "Tier", embed_fn, encoder_fn, head_fn):
        cfg, emb = tier.config, tier.bert.embeddings
        self.tier = tier
        self.embed_fn, self.encoder_fn, self.head_fn = embed_fn, encoder_fn, head_fn
        tt = emb.token_type_embeddings
        self.tables = (emb.word_embeddings.weight, emb.position_embeddings.weight,
                       None if tt is None else tt.weight, emb.LayerNorm.weight, emb.LayerNorm.bias)
        self.typed = tt is not None
        self.zero_based = tier.family.position_ids is positions_from_zero
        self.head = (tier.bert.pooler.dense.weight, tier.bert.pooler.dense.bias, tier.classifier.weight,
                     tier.classifier.bias)
        # the dense-weight layout for the tier's dtype; with panels the head's two GEMMs run on
        # them too (one path for every batch size), packed on first use and again when a head
        # weight changes: (signature, storages held, weights)
        self.layout = packing("cpu", tier.dtype)
        self._head_packed: tuple | None = None
        self.args = (cfg.num_attention_heads, cfg.layer_norm_eps, tier._act_name)

    @classmethod
    def build(cls, tier: "Tier") -> "_CpuPlan | None":
        ops_ = getattr(backends._module("native"), "OPS", {})
        if (tier.device.type != "cpu" or backends.priority("cpu")[0] != "native" or tier.bert.embeddings_project
                is not None or not all(k in ops_ for k in ("embed_layer_norm", "encoder_layers", "exit_head"))):
            return None
        cfg = tier.config
        # the decisions that depend on dtypes and fixed shapes only, asked once on real tensors
        x = tier.bert.embeddings.word_embeddings.weight[:1].detach()
        cu = torch.tensor([0, 1], dtype=torch.int32)
        one = torch.zeros(1, dtype=torch.int64)
        emb = tier.bert.embeddings
        tt = emb.token_type_embeddings
        probes = (("embed_layer_norm", (one, one, None if tt is None else one, emb.word_embeddings.weight,
                                        emb.position_embeddings.weight, None if tt is None else tt.weight,
                                        emb.LayerNorm.weight, emb.LayerNorm.bias, cfg.layer_norm_eps, None)),
                  ("encoder_layers", (x, cu, 1, tier.encoder_weights("plain"), cfg.num_attention_heads,
                                      cfg.layer_norm_eps, tier._act_name)),
                  ("exit_head", (x, tier.bert.pooler.dense.weight, tier.bert.pooler.dense.bias,
                                 tier.classifier.weight, tier.classifier.bias, 1.0, tier._head_act)))
        fns = []
        for op, args in probes:
            try:
                name, fn = backends.implementation(op, *args)
            except NotImplementedError:
                return None
            if name != "native":
                return None
            fns.append(fn)
        return cls(tier, *fns)

    def encode(self, input_ids, token_type_ids, cu_seqlens, max_seqlen, first_tokens=False) -> torch.Tensor | None:
        T = input_ids.shape[0]
        pos = _positions_in_rows_cpu(cu_seqlens, T) if self.zero_based else None
        if pos is None:
            return None  # dead slots or another position rule: the general path
        # (a position past the table is refused by the kernel; prepare_inputs refuses such rows)
        word, pos_w, type_w, ln_w, ln_b = self.tables
        tier = self.tier
        x = self.embed_fn(input_ids, pos, token_type_ids if self.typed else None, word, pos_w, type_w, ln_w, ln_b,
                          self.args[1], None)
        weights = tier.encoder_weights(self.layout)
        return self.encoder_fn(x, cu_seqlens, int(max_seqlen), weights, *self.args, first_tokens)

    def exit_head(self, cls_hidden, threshold: float):
        return self.head_fn(cls_hidden, *self._head_weights(), threshold, self.tier._head_act)

    def _head_weights(self) -> tuple:
        if self.layout != "panel":
            return self.head
        sig = _signature(self.head)
        got = self._head_packed
        if got is None or got[0] != sig:
            pw, pb, cw, cb = self.head
            got = self._head_packed = (sig, [p.detach() for p in self.head],
                                       (panel_pack(pw), pb, panel_pack(cw), cb))
        return got[2]


class Tier(nn.Module):
    """A BERT-family sequence classifier that runs padding-free.

    ``Tier(config)`` builds it with uninitialised weights; load them with
    :func:`cascade_rt.checkpoint.load_tier` or ``Tier.from_pretrained(dir)``.
    Calling the module returns logits ``(B, num_labels)`` float32.
    ``state_dict()`` / ``load_state_dict()`` speak the family's Hugging Face names.
    """

    def __init__(self, config: TierConfig):
        super().__init__()
        self.config = config
        self.family = config.family
        self.bert = _Bert(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._act_name = _LINEAR_ACTIVATION[config.hidden_act]
        self._head_act = self.family.head_activation(config)
        self.source_dir: str | None = None
        # layout -> (signature of the dense weights, their storages, the encoder_layers weight list)
        self._encoder_weights: dict[str, tuple[tuple, list, list[torch.Tensor]]] = {}
        self.register_state_dict_post_hook(_to_hf_names)
        self.register_load_state_dict_pre_hook(_from_hf_names)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None) -> "Tier":
        from .checkpoint import load_tier

        return load_tier(path, dtype=dtype, device=device)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` + ``model.safetensors`` loadable by ``transformers``."""
        from .checkpoint import save_tier

        save_tier(self, path)

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.classifier.weight.dtype

    # -- the padding-free forward ----------------------------------------------------------
    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        *,
        sync_free: bool = False,
        first_tokens: bool = False,
    ) -> torch.Tensor:
        """Run embeddings and every layer on packed tokens.

        Args:
            input_ids, token_type_ids: (T,), int64, packed; slots past ``cu_seqlens[-1]``
                are dead (any valid id).
            cu_seqlens: (B+1,), int32.  max_seqlen: host upper bound of a row's length.
            sync_free: ``T`` is an upper bound with many dead slots (the cascade's sync-free
                mode); see :meth:`run_layer`.
            first_tokens: return each row's first-token ([CLS]) state only, ``(B, hidden)``,
                what :meth:`first_tokens` reads from the full result. With exact shapes the
                last layer then runs for those tokens alone (its keys and values from every
                token; a classifier reads nothing else), which saves most of that layer;
                elsewhere (sync-free, no backend for it) every layer runs in full and the
                first tokens are read from the result. Exact shapes need every row non-empty.

        Returns:
            hidden states (T, hidden_size) in the tier's dtype; with ``sync_free``, rows past
            ``cu_seqlens[-1]`` hold no meaningful values. With ``first_tokens``: (B, hidden).
        """
        backends.check_model_backend(input_ids.device, sync_free)
        if not sync_free and input_ids.device.type == "cpu":
            plan = self._cpu_plan()
            if plan is not None:
                y = plan.encode(input_ids, token_type_ids, cu_seqlens, max_seqlen, first_tokens)
                if y is not None:
                    return y
        x = self.embed(input_ids, token_type_ids, cu_seqlens, sync_free=sync_free)
        L = self.config.num_hidden_layers
        if not sync_free and L:
            return self.run_layers(0, L, x, cu_seqlens, max_seqlen, first_tokens=first_tokens)
        for i in range(L):
            x = self.run_layer(i, x, cu_seqlens, max_seqlen, sync_free=sync_free)
        return self.first_tokens(x, cu_seqlens) if first_tokens else x

    def run_layers(self, start: int, stop: int, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *,
                   first_tokens: bool = False) -> torch.Tensor:
        """Encoder layers ``start`` to ``stop - 1`` on packed hidden states (exact shapes):
        in one :func:`cascade_rt.ops.encoder_layers` call where a backend runs it (the native
        CPU kernel on the tier's packed weights, as :meth:`encode` runs every layer), else
        :meth:`run_layer` per layer. What a model that reads the hidden states between layers
        (early exit) runs, so it gets the same kernels as a whole tier. ``first_tokens``: the
        last of them for each row's first token only, ``(B, hidden)``, as in :meth:`run_layer`."""
        L = self.config.num_hidden_layers
        if not 0 <= start < stop <= L:
            raise ValueError(f"run_layers: need 0 <= start < stop <= {L}, got {start}, {stop}")
        y = self._encode_fused(start, stop, x, cu_seqlens, max_seqlen, first_tokens)
        if y is not None:
            return y
        for i in range(start, stop):
            x = self.run_layer(i, x, cu_seqlens, max_seqlen, first_tokens=first_tokens and i == stop - 1)
        return x

    def _encode_fused(self, start: int, stop: int, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                      first_tokens: bool = False) -> torch.Tensor | None:
        """Layers ``start`` to ``stop - 1`` in one :func:`cascade_rt.ops.encoder_layers` call (exact shapes), or
        ``None`` where no backend runs that op on these inputs (CUDA, a forced Triton backend,
        tracing): the caller then runs :meth:`run_layer` per layer. With the native CPU kernel
        the dense weights are packed once (:meth:`encoder_weights`), in the layout
        :func:`cascade_rt.dense.packing` picks for the dtype.

        At batch 1 the encoder's GEMMs stream every weight through the caches, so each Python
        step of a forward runs cold: this path keeps them few (one weight check, one dispatch).
        """
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        cfg = self.config
        args = (cfg.num_attention_heads, cfg.layer_norm_eps, self._act_name)
        sig = self._weights_signature()
        plain = self.encoder_weights("plain", signature=sig)
        try:
            name, fn = backends.implementation("encoder_layers", x, cu_seqlens, max_seqlen, plain, *args)
        except NotImplementedError:
            return None
        weights = (self.encoder_weights(packing("cpu", x.dtype), signature=sig) if name == "native"
                   else plain)
        n = ENCODER_WEIGHTS_PER_LAYER
        return fn(x, cu_seqlens, int(max_seqlen), weights[n * start: n * stop], *args, first_tokens)

    def _cpu_plan(self) -> "_CpuPlan | None":
        """The CPU exact path with its choices made once (see :class:`_CpuPlan`), or ``None``
        where the native backend would not run it (forced elsewhere, not built, tracing)."""
        if torch.compiler.is_compiling():
            return None
        key = (backends.get_backend(), _param_registrations[0], panel_enabled())
        got = self.__dict__.get("_plan")
        if got is not None and got[0] == key:
            return got[1]
        plan = _CpuPlan.build(self)
        self.__dict__["_plan"] = (key, plan)
        return plan

    def _weight_sources(self) -> list[torch.Tensor]:
        """The parameters the encoder weight lists are built from (held in order; gathered
        again after any module anywhere registers a parameter, which a re-assigned one does)."""
        got = self.__dict__.get("_sources")
        sources = got[1] if got is not None and got[0] == _param_registrations[0] else None
        if sources is None:
            sources = []
            for layer in self.bert.encoder.layer:
                sa = getattr(layer.attention, "self")
                sources += [sa.query.weight, sa.key.weight, sa.value.weight, sa.query.bias, sa.key.bias,
                            sa.value.bias, layer.attention.output.dense.weight, layer.intermediate.dense.weight,
                            layer.output.dense.weight]
            self.__dict__["_sources"] = (_param_registrations[0], sources)
        return sources

    def _weights_signature(self) -> tuple:
        return _signature(self._weight_sources())

    def encoder_weights(self, layout: str = "plain", signature: tuple | None = None) -> list[torch.Tensor]:
        """The weight list :func:`cascade_rt.ops.encoder_layers` takes (12 tensors per layer).

        ``layout``: the dense weights' layout, one of :func:`cascade_rt.dense.packing`'s
        answers: ``"panel"`` (:func:`cascade_rt.dense.panel_pack`, fp32 CPU),
        ``"onednn"`` (:func:`cascade_rt.dense.prepack`; the weight itself where the dense
        layers do not run oneDNN) or ``"plain"``. Each list is built on first use and kept; it
        is rebuilt when a dense weight changes (in place, which bumps its version, or
        re-assigned, or moved), so a packed copy never goes stale. A packed layout costs the
        dense weights' size in memory again. ``signature``: the weights' current signature,
        when the caller has just computed it.
        """
        sig = self._weights_signature() if signature is None else signature
        got = self._encoder_weights.get(layout)
        if got is not None and got[0] == sig:
            return got[2]
        if layout not in ("panel", "onednn", "plain"):
            raise ValueError(f"encoder_weights: layout {layout!r} is not one of panel, onednn, plain")
        pack = lambda w: pack_weight(w, layout)  # noqa: E731
        weights = []
        for layer in self.bert.encoder.layer:
            w_qkv, b_qkv = layer.qkv_weights()
            ao, inter, fo = layer.attention.output, layer.intermediate.dense, layer.output
            weights += [pack(w_qkv), b_qkv, pack(ao.dense.weight), ao.dense.bias, ao.LayerNorm.weight,
                        ao.LayerNorm.bias, pack(inter.weight), inter.bias, pack(fo.dense.weight), fo.dense.bias,
                        fo.LayerNorm.weight, fo.LayerNorm.bias]
        # qkv_weights() may have re-fused (new storage): sign what the list was built from, and
        # hold those storages so that no later tensor can reuse an address in the signature
        sig = self._weights_signature()
        self._encoder_weights[layout] = (sig, [p.detach() for p in self._weight_sources()], weights)
        return weights

    def __getstate__(self):
        # copies and pickles leave the caches behind (packed oneDNN weights cannot be copied);
        # the copy rebuilds them on first use
        state = dict(super().__getstate__())
        state["_encoder_weights"] = {}
        state.pop("_plan", None)
        state.pop("_sources", None)
        return state

    def _apply(self, fn, recurse=True):
        # .to()/.half()/.cuda() replace the parameters: drop the weight lists built from them
        self._encoder_weights = {}
        self.__dict__.pop("_sources", None)
        self.__dict__.pop("_plan", None)
        return super()._apply(fn, recurse)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, cu_seqlens: torch.Tensor, *,
              sync_free: bool = False) -> torch.Tensor:
        """Embeddings + LayerNorm of packed tokens: (T,) ids/types -> (T, hidden).

        The family's rule: positions (RoBERTa family: from ``pad_token_id + 1``, pad tokens at
        ``pad_token_id``), token types (none for DistilBERT: ``token_type_ids`` is ignored),
        and ELECTRA's projection of narrower embeddings to the hidden size. ``sync_free``
        (``T`` an upper bound): one :func:`cascade_rt.ops.embed_layer_norm` that gathers and
        normalises only the live slots (rows past ``cu_seqlens[-1]`` are left unwritten). On
        the CPU the exact path runs that op too, on every slot (its native kernel is one pass);
        on CUDA it gathers and calls :func:`cascade_rt.ops.add_layer_norm`.
        """
        cfg = self.config
        emb = self.bert.embeddings
        T = input_ids.shape[0]
        # exact shapes on the CPU: the host computes positions (the sync-free path reads nothing back)
        pos = _positions_in_rows_cpu(cu_seqlens, T) if input_ids.device.type == "cpu" and not sync_free else None
        if pos is None:
            row = token_row_ids_ref(cu_seqlens, T)
            starts = torch.cat([cu_seqlens.to(torch.int64), cu_seqlens.new_zeros(1).to(torch.int64)])
            # position of each token inside its row; dead slots clamp into range (results unused)
            pos = torch.arange(T, device=input_ids.device) - starts[row]
        pos = self.family.position_ids(input_ids, pos, cfg.pad_token_id)
        pos = pos.clamp_(0, cfg.max_position_embeddings - 1)
        proj = self.bert.embeddings_project
        if sync_free or input_ids.device.type == "cpu":  # one op (on the CPU: its native kernel)
            tt = emb.token_type_embeddings
            x = ops.embed_layer_norm(input_ids, pos, None if tt is None else token_type_ids,
                                     emb.word_embeddings.weight, emb.position_embeddings.weight,
                                     None if tt is None else tt.weight, emb.LayerNorm.weight,
                                     emb.LayerNorm.bias, cfg.layer_norm_eps, cu_seqlens if sync_free else None)
            if proj is None:
                return x
            if sync_free:
                return ops.linear(x, proj.weight, proj.bias, cu_seqlens, zero_dead=False)
            return dense_layer(x, proj.weight, proj.bias)
        x = emb.word_embeddings(input_ids)
        if emb.token_type_embeddings is None:  # no token types: LayerNorm(word + position)
            x = ops.add_layer_norm(x, emb.position_embeddings(pos), emb.LayerNorm.weight,
                                   emb.LayerNorm.bias, cfg.layer_norm_eps)
        else:
            x = ops.add_layer_norm(x + emb.position_embeddings(pos), emb.token_type_embeddings(token_type_ids),
                                   emb.LayerNorm.weight, emb.LayerNorm.bias, cfg.layer_norm_eps)
        return x if proj is None else dense_layer(x, proj.weight, proj.bias)

    def run_layer(
        self, i: int, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *,
        sync_free: bool = False, first_tokens: bool = False,
    ) -> torch.Tensor:
        """Encoder layer ``i`` on packed hidden states (T, hidden) -> (T, hidden).

        ``first_tokens`` (exact shapes only, every row non-empty): the layer's output for each
        row's first token only, ``(B, hidden)`` (:meth:`first_tokens` of the full output):
        queries, attention, the output dense, the FFN and both LayerNorms run for those ``B``
        tokens, keys and values for all ``T``.

        ``sync_free=False`` (exact shapes, ``T`` about the live token count): the four dense
        layers run as :func:`cascade_rt.dense.dense` (cuBLAS on CUDA, oneDNN with the
        activation fused on the CPU). (On the CPU, :meth:`encode` runs all layers in one
        :func:`cascade_rt.ops.encoder_layers` call instead; this per-layer path is what it is
        tested against.) ``sync_free=True`` (``T`` an upper bound, the
        live count ``cu_seqlens[-1]`` only on the device): they run as
        :func:`cascade_rt.ops.linear`, which skips the dead rows (and leaves them unwritten),
        with the intermediate activation fused, so the GEMMs shrink as rows exit; attention
        and the LayerNorms skip the dead rows too.
        """
        cfg = self.config
        layer = self.bert.encoder.layer[i]
        T = x.shape[0]
        H, D = cfg.num_attention_heads, cfg.head_dim

        def dense(t, weight, bias, act="none"):
            if sync_free:
                return ops.linear(t, weight, bias, cu_seqlens, act, zero_dead=False)
            return dense_layer(t, weight, bias, act)

        w_qkv, b_qkv = layer.qkv_weights()
        if first_tokens:
            if sync_free:
                raise ValueError("run_layer: first_tokens needs exact shapes (sync_free=False)")
            first = cu_seqlens[:-1].to(torch.int64)
            x_all, x = x, x.index_select(0, first)
            T = x.shape[0]
            # the queries of the first tokens, the keys and values of every token
            kv = dense(x_all, w_qkv[H * D:], b_qkv[H * D:]).view(-1, 2, H, D)
            scale = 1.0 / math.sqrt(D)
            try:
                q = dense(x, w_qkv[: H * D], b_qkv[: H * D]).view(T, H, D)
                ctx = ops.first_token_attention(q, kv[:, 0], kv[:, 1], cu_seqlens, max_seqlen, scale)
            except NotImplementedError:  # a forced backend without it: every query, first ones kept
                q = dense(x_all, w_qkv[: H * D], b_qkv[: H * D]).view(-1, H, D)
                ctx = ops.varlen_attention(q, kv[:, 0], kv[:, 1], cu_seqlens, max_seqlen, scale).index_select(0, first)
        else:
            qkv = dense(x, w_qkv, b_qkv).view(T, 3, H, D)
            ctx = ops.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, max_seqlen,
                                       1.0 / math.sqrt(D), zero_dead=not sync_free)
        live = cu_seqlens if sync_free else None
        ao = layer.attention.output
        attn = dense(ctx.reshape(T, H * D), ao.dense.weight, ao.dense.bias)
        x = ops.add_layer_norm(attn, x, ao.LayerNorm.weight, ao.LayerNorm.bias, cfg.layer_norm_eps, live)
        inter = layer.intermediate.dense
        h = dense(x, inter.weight, inter.bias, self._act_name)
        fo = layer.output
        h = dense(h, fo.dense.weight, fo.dense.bias)
        return ops.add_layer_norm(h, x, fo.LayerNorm.weight, fo.LayerNorm.bias, cfg.layer_norm_eps, live)

    @staticmethod
    def first_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """(B, hidden) first-token ([CLS]) state of every row; dead rows read a clamped slot."""
        if hidden.shape[0] == 0:
            return hidden.new_zeros((cu_seqlens.shape[0] - 1, hidden.shape[1]))
        idx = cu_seqlens[:-1].to(torch.int64).clamp(max=hidden.shape[0] - 1)
        return hidden.index_select(0, idx)

    def exit_head(self, cls_hidden: torch.Tensor, threshold: float):
        """Fused head dense + activation + classifier + confidence test (the family's head:
        BERT pooler + tanh, RoBERTa dense + tanh, DistilBERT pre_classifier + ReLU, ELECTRA dense +
        GELU); see :func:`cascade_rt.ops.exit_head`."""
        if cls_hidden.device.type == "cpu":
            plan = self._cpu_plan()
            if plan is not None:
                return plan.exit_head(cls_hidden, float(threshold))
        return ops.exit_head(
            cls_hidden, self.bert.pooler.dense.weight, self.bert.pooler.dense.bias,
            self.classifier.weight, self.classifier.bias, threshold, self._head_act,
        )

    def forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        cls_hidden = self.encode(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, batch.max_seqlen,
                                 first_tokens=True)
        logits, _, _ = self.exit_head(cls_hidden, 1.0)
        return logits

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, num_labels) float32 for padded ``(B, S)`` or packed ``(T,)`` input.

        Inference only (no autograd graph is built); train with ``transformers`` and load the
        result (see :mod:`cascade_rt.train`)."""
        batch = prepare_inputs(
            input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen,
            limits=[self.config], device=self.device, check=True,
        )
        if batch.num_rows == 0:
            return torch.zeros((0, self.config.num_labels), dtype=torch.float32, device=self.device)
        return self.forward_packed(batch)
