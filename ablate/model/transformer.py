"""A decoder-only transformer with open_lm's architecture and parameter names.

open_lm (github.com/mlfoundations/open_lm) is not on PyPI and needs xformers, so this is a small
re-implementation that loads open_lm state dicts unchanged. What it mirrors, checked against open_lm's
open_lm/model.py, open_lm/norms.py and open_lm/positional_embedding/{rotary,head_rotary}.py:

- pre-norm blocks: ``h = x + attn(attention_norm(x))``, ``out = h + ffn(ffn_norm(h))``, final ``norm``;
- attention: one bias-free ``in_proj`` (D -> 3D, split q | k | v), optional q/k norms over the full width
  D (before splitting into heads), rotary on (B, T, H, Dh) tensors, causal softmax attention with
  the default 1/sqrt(Dh) scale, bias-free ``out_proj``;
- SwiGLU ``w12`` (D -> 2*hidden, first half is the gate) and ``w3``; GELU as ``_ff_w1``/``_ff_w2``,
  registered a second time inside ``feed_forward`` (a Sequential), so both names are in the state dict;
- init: truncated normal (+-3 std), std 1/sqrt(fan_in); ``out_proj`` and the FFN's output layer are
  further divided by sqrt(2 * (layer_id + 1)); embedding and output std 1/sqrt(D); norms ones/zeros.

Incremental decoding (not in open_lm): ``model(ids, cache=model.new_kv_cache())`` runs the new tokens only,
attending to the keys and values of earlier calls stored in a ``KVCache``; rotary rotates the new tokens
by their absolute positions. Without a cache the forward is the plain training forward.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ablate.model.args import LAYER_NORM_AFFINE, ModelArgs, ffn_hidden_dim


def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)


class RmsNorm(nn.Module):
    """open_lm's RmsNorm: normalise in float32, cast back, then scale by ``weight``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


NORM_TYPES = (nn.LayerNorm, RmsNorm)


def make_norm(args: ModelArgs) -> nn.Module:
    """The norm layer ``args.model_norm`` names (parameters ``weight`` and ``bias``, as far as it has them)."""
    if args.model_norm == "rms_norm":
        return RmsNorm(args.hidden_dim, args.norm_eps)
    gain, bias = LAYER_NORM_AFFINE[args.model_norm]
    return nn.LayerNorm(args.hidden_dim, eps=args.norm_eps, elementwise_affine=gain, bias=bias)


class Rotary(nn.Module):
    """Rotary embedding as open_lm's, GPT-NeoX layout: channel j pairs with j + Dh/2 in each head.

    ``by_head=False`` ("rotary") rotates by the token's position. ``by_head=True`` ("head_rotary")
    reproduces open_lm's first version, which the released open_lm-1b checkpoint needs (open_lm's
    model_configs/open_lm_1b_old.json): it rotates along the head axis instead of time, so head h is
    rotated by angle h for every token.
    As q and k of one head get the same rotation, attention scores do not depend on it: in effect the
    model has no positional embedding (position is only implied by the causal mask).
    """

    inv_freq: torch.Tensor  # a buffer: (Dh/2,)

    def __init__(self, head_dim: int, by_head: bool) -> None:
        super().__init__()
        self.by_head = by_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        # Not persistent: derived from head_dim, so it is no part of a checkpoint (open_lm saves it;
        # checkpoint_io drops it on load after checking its shape).
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, n: int, device: torch.device, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles for indices start..start+n-1, each (n, Dh)."""
        idx = torch.arange(start, start + n, device=device, dtype=torch.float32)
        angles = torch.outer(idx, self.inv_freq.float())  # (n, Dh/2)
        angles = torch.cat((angles, angles), dim=-1)  # (n, Dh)
        return angles.cos(), angles.sin()

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, start_pos: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k, each (B, T, H, Dh), whose first token is at position ``start_pos``.

        ``start_pos`` is for incremental decoding (the new tokens follow ``start_pos`` cached ones); it
        does not matter for ``by_head``, whose angle is the head index.
        """
        _, t, h, _ = q.shape
        if self.by_head:
            cos, sin = self.cos_sin(h, q.device)
            cos, sin = cos[None, None], sin[None, None]  # (1, 1, H, Dh)
        else:
            cos, sin = self.cos_sin(t, q.device, start_pos)
            cos, sin = cos[None, :, None], sin[None, :, None]  # (1, T, 1, Dh)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated_half * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for the tokens run so far, for incremental decoding.

    Make one with ``Transformer.new_kv_cache`` and pass it to each call of the model:
    ``model(prompt, cache=c)`` (prefill), then ``model(next_ids, cache=c)`` with one new token (or more)
    per row. Each call attends to all earlier tokens of the cache and appends its own; ``length`` is the
    number of tokens stored, i.e. the absolute position of the next token. The buffers, (B, H, max_len, Dh)
    per layer for keys and for values, are allocated on the first call with its batch size, device and
    dtype (bf16 under autocast). Holds no parameters and nothing of the model's state: one cache per
    sequence batch, ``reset()`` to reuse it for a new batch.
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"KVCache max_len must be >= 1, got {max_len}")
        self.n_layers, self.max_len = n_layers, max_len
        self.length = 0
        self.keys: list[torch.Tensor] = []  # n_layers x (B, H, max_len, Dh)
        self.values: list[torch.Tensor] = []  # n_layers x (B, H, max_len, Dh)

    def reset(self) -> None:
        """Forget the stored tokens (and the batch size): the next call starts again at position 0."""
        self.length = 0
        self.keys, self.values = [], []

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``k, v (B, H, T, Dh)`` of one layer at positions ``length..length+T-1``.

        Returns keys and values of all tokens so far, each (B, H, length + T, Dh). ``length`` itself
        advances once per forward (``advance``), after every layer has stored its keys.
        """
        b, h, t, dh = k.shape
        if not self.keys:
            shape = (b, h, self.max_len, dh)
            self.keys = [k.new_empty(shape) for _ in range(self.n_layers)]
            self.values = [v.new_empty(shape) for _ in range(self.n_layers)]
        ck, cv = self.keys[layer_id], self.values[layer_id]
        if ck.shape[0] != b:
            raise ValueError(f"KVCache holds a batch of {ck.shape[0]} sequences, got {b}")
        end = self.length + t
        ck[:, :, self.length : end] = k
        cv[:, :, self.length : end] = v
        return ck[:, :, :end], cv[:, :, :end]

    def check_room(self, t: int) -> None:
        if self.length + t > self.max_len:
            raise ValueError(
                f"KVCache is full: {self.length} tokens stored + {t} new > max_len {self.max_len}"
            )

    def advance(self, t: int) -> None:
        self.length += t


class Attention(nn.Module):
    """Causal multi-head self-attention with open_lm's names (in_proj, out_proj, q_norm, k_norm)."""

    def __init__(self, layer_id: int, args: ModelArgs) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.head_dim = args.n_heads, args.head_dim
        d = args.hidden_dim
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.q_norm = make_norm(args) if args.qk_norm else nn.Identity()
        self.k_norm = make_norm(args) if args.qk_norm else nn.Identity()
        pe = args.positional_embedding_type
        self.pos_embed = Rotary(args.head_dim, by_head=pe == "head_rotary") if pe != "none" else None

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.in_proj.in_features)
        _trunc_normal_(self.in_proj.weight, std)
        # Scaled by depth (arXiv:1908.11365), as open_lm does.
        _trunc_normal_(self.out_proj.weight, std / math.sqrt(2 * (self.layer_id + 1)))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x (B, T, D)`` -> ``(B, T, D)``; with ``cache``, x are the tokens after the cached ones."""
        b, t, d = x.shape  # (B, T, D)
        start = 0 if cache is None else cache.length  # absolute position of x's first token
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # each (B, T, D)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim)  # (B, T, H, Dh)
        k = k.view(b, t, self.n_heads, self.head_dim)
        v = v.view(b, t, self.n_heads, self.head_dim)
        if self.pos_embed is not None:
            q, k = self.pos_embed(q, k, start)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, T, Dh)
        if cache is None or start == 0:
            if cache is not None:
                cache.update(self.layer_id, k, v)  # prefill: store, attend within x as without a cache
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        else:
            k, v = cache.update(self.layer_id, k, v)  # each (B, H, S, Dh), S = start + T
            # Query i (position start + i) sees keys 0..start + i. One new token sees them all; for
            # several, SDPA's is_causal would align the mask top-left (query i sees keys 0..i), so spell it.
            mask = None if t == 1 else torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(out)


class SwiGLU(nn.Module):
    """SwiGLU with packed input weights, as xformers' SwiGLU that open_lm uses (names w12, w3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)  # each (B, T, hidden)
        return self.w3(F.silu(gate) * up)  # (B, T, D)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, layer_id: int, args: ModelArgs) -> None:
        super().__init__()
        self.layer_id = layer_id
        d, self.hidden_dim = args.hidden_dim, ffn_hidden_dim(args)
        self.attention = Attention(layer_id, args)
        if args.ffn_type == "swiglu":
            self.feed_forward: nn.Module = SwiGLU(d, self.hidden_dim)
        else:
            # open_lm registers these twice (as _ff_w1/_ff_w2 and inside feed_forward); keep both names
            # so its state dicts load as they are.
            self._ff_w1 = nn.Linear(d, self.hidden_dim, bias=False)
            self._ff_w2 = nn.Linear(self.hidden_dim, d, bias=False)
            self.feed_forward = nn.Sequential(self._ff_w1, nn.GELU(approximate="none"), self._ff_w2)
        self.attention_norm = make_norm(args)
        self.ffn_norm = make_norm(args)

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        if isinstance(self.feed_forward, SwiGLU):
            w_in, w_out = self.feed_forward.w12.weight, self.feed_forward.w3.weight
        else:
            w_in, w_out = self._ff_w1.weight, self._ff_w2.weight
        _trunc_normal_(w_in, 1.0 / math.sqrt(w_in.shape[1]))
        # Scaled by depth, as out_proj; fan_in here is the FFN width.
        _trunc_normal_(w_out, 1.0 / math.sqrt(self.hidden_dim) / math.sqrt(2 * (self.layer_id + 1)))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cache)  # (B, T, D)
        return h + self.feed_forward(self.ffn_norm(h))  # (B, T, D)


class Transformer(nn.Module):
    """Decoder-only LM; ``forward(input_ids (B, T)) -> logits (B, T, V)`` in float32.

    ``forward(input_ids, cache=kv)`` decodes incrementally: input_ids are the tokens after the
    ``kv.length`` already in the cache (``new_kv_cache``), and their logits equal those of the full
    forward over the whole sequence at the same positions.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        args.validate()
        self.args = args
        self.activation_checkpointing = False  # recompute block activations in backward (training only)
        d = args.hidden_dim
        # Registration order as open_lm, so named_parameters() lists in the same order.
        self.post_embed_norm = make_norm(args) if args.post_embed_norm else nn.Identity()
        self.tok_embeddings = nn.Embedding(args.vocab_size, d)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = make_norm(args)
        self.output = nn.Linear(d, args.vocab_size, bias=False)
        if args.weight_tying:
            self.tok_embeddings.weight = self.output.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """open_lm's initialisation (see the module docstring)."""
        std = 1.0 / math.sqrt(self.args.hidden_dim)
        _trunc_normal_(self.output.weight, std)
        if not self.args.weight_tying:
            _trunc_normal_(self.tok_embeddings.weight, std)
        for layer in self.layers:
            cast(Block, layer).reset_parameters()
        for m in self.modules():
            if isinstance(m, NORM_TYPES):
                m.reset_parameters()

    def new_kv_cache(self, max_len: int | None = None) -> KVCache:
        """An empty cache for up to ``max_len`` tokens per sequence (default ``args.seq_len``)."""
        return KVCache(self.args.n_layers, self.args.seq_len if max_len is None else int(max_len))

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None:
            cache.check_room(input_ids.shape[1])
        x = self.post_embed_norm(self.tok_embeddings(input_ids))  # (B, T, D)
        recompute = (
            self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        )
        for layer in self.layers:
            if recompute:  # keep only each block's input; its activations are recomputed in backward
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)  # (B, T, D)
            else:
                x = layer(x, cache)  # (B, T, D)
        if cache is not None:
            cache.advance(input_ids.shape[1])  # after every layer stored its keys at the old length
        # Logits in float32 (as open_lm/llama) so the softmax is stable under bf16 autocast.
        return self.output(self.norm(x)).float()  # (B, T, V)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
