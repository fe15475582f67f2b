"""Bag-of-words CLIP alignment of image-code embeddings to frozen text embeddings (paper Sec. 3.2, Fig. 7).

An image is the mean of its codes' embeddings, a caption the mean of its tokens' embeddings in the
pretrained language model. A CLIP loss over a batch of pairs trains only the image-code table and the
temperature; the text table is a frozen input. Shapes: B batch, L sequence, D width, K codebook size,
T text rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ablate import metrics

INIT_LOG_TEMP = math.log(1 / 0.07)
"""CLIP's initial log logit scale: logits are cosine similarities times exp(log_temp) = 1/0.07."""
MAX_LOG_TEMP = math.log(100.0)
"""CLIP clamps the logit scale at 100 to keep training stable."""
_NEAREST_CHUNK = 1024  # image rows per similarity block: bounds the (chunk, T) matrix at paper scale


def bag_of_words(ids: torch.Tensor, mask: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Mean embedding of the ids where ``mask`` is True: ids (B, L) long, mask (B, L) bool, table (V, D) -> (B, D).

    A row with no True position gives the zero vector.
    """
    mask = mask.to(torch.bool)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    weights = (mask / count).to(table.dtype)  # (B, L): 1/count where kept, 0 where masked
    # Masked positions may hold padding that is no valid row; any valid id works, its weight is 0.
    safe = ids.masked_fill(~mask, 0)
    # embedding_bag sums weighted rows without materialising (B, L, D) (paper: 1024 x 1024 x 2048).
    return F.embedding_bag(safe, table, per_sample_weights=weights, mode="sum")  # (B, D)


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, log_temp: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric CLIP loss of matched pairs: img (B, D), txt (B, D) -> (scalar loss, logits (B, B)).

    Both sides are l2-normalised; logits = img @ txt.T * exp(log_temp), the scale clamped at 100. Pair i
    is the positive of row i and of column i; the loss is the mean of the image->text and text->image
    cross-entropies.
    """
    img = F.normalize(img, dim=-1)  # (B, D)
    txt = F.normalize(txt, dim=-1)  # (B, D)
    log_temp = torch.as_tensor(log_temp, dtype=img.dtype, device=img.device)
    logits = img @ txt.T * log_temp.clamp(max=MAX_LOG_TEMP).exp()  # (B, B): row = image, column = caption
    target = torch.arange(logits.shape[0], device=logits.device)  # (B,)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, logits


@torch.no_grad()
def nearest_text_tokens(image_rows: torch.Tensor, text_table: torch.Tensor, k: int) -> torch.Tensor:
    """Ids of the k text rows most cosine-similar to each image row: (K, D), (T, D) -> (K, k), best first."""
    if not 1 <= k <= text_table.shape[0]:
        raise ValueError(f"k must lie in [1, {text_table.shape[0]}] (the text rows), got {k}")
    text = F.normalize(text_table.float(), dim=-1)  # (T, D)
    out = []
    for start in range(0, image_rows.shape[0], _NEAREST_CHUNK):
        rows = F.normalize(image_rows[start : start + _NEAREST_CHUNK].float(), dim=-1)  # (c, D)
        out.append((rows @ text.T).topk(k, dim=1).indices)  # (c, k)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def pad_captions(caption_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged captions -> (ids (N, L) long, zero-padded; mask (N, L) bool, True on caption tokens)."""
    width = max((len(c) for c in caption_ids), default=0)
    ids = torch.zeros(len(caption_ids), max(width, 1), dtype=torch.long)  # (N, L)
    mask = torch.zeros_like(ids, dtype=torch.bool)  # (N, L)
    for i, cap in enumerate(caption_ids):
        ids[i, : len(cap)] = torch.as_tensor(list(cap), dtype=torch.long)
        mask[i, : len(cap)] = True
    return ids, mask


class ImageCodeEmbedding(nn.Module):
    """The trainable side: a (codebook_size, D) image-code table and CLIP's log temperature."""

    def __init__(self, codebook_size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # Unit-scale rows, so the learning rate means the same for any LM width or embedding scale (the loss
        # sees only directions); train_alignment rescales the result to the text table's scale.
        self.weight = nn.Parameter(torch.randn(codebook_size, dim, generator=generator))  # (K, D)
        self.log_temp = nn.Parameter(torch.tensor(INIT_LOG_TEMP))  # scalar

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Bag-of-words image embeddings: codes (B, n_codes) long in [0, K) -> (B, D)."""
        return bag_of_words(codes, torch.ones_like(codes, dtype=torch.bool), self.weight)

    def temperature(self) -> float:
        """The logit scale the loss uses, exp(log_temp) clamped at 100 (CLIP's "temperature" parameter)."""
        return float(self.log_temp.detach().clamp(max=MAX_LOG_TEMP).exp())


def train_alignment(
    caption_ids: Sequence[Sequence[int]],
    image_codes: torch.Tensor,
    text_table: torch.Tensor,
    batch_size: int,
    steps: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    *,
    codebook_size: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Train image-code embeddings against frozen bag-of-words caption embeddings with a CLIP loss.

    caption_ids: N captions (text ids, rows of ``text_table``); image_codes (N, n_codes) long in [0, K);
    text_table (T, D), never updated. Batches of ``min(batch_size, N)`` pairs are drawn without
    replacement, reshuffled each epoch (a short last batch is dropped: the loss depends on batch size).
    Adam on the image table and log temperature only. ``on_step(step, {"loss", "temperature"})`` is
    called after each optimizer step (step = 1..steps), with the batch loss and the logit scale it used.
    K is ``codebook_size`` or, if None, ``image_codes.max() + 1``. Deterministic from ``seed`` on the CPU.

    Returns the (K, D) image table on the CPU, rescaled by one scalar to the text table's RMS (cosines and
    so the loss are unchanged; the rows suit initialising the LM's image-code embeddings), and the history:
    one ``{"step", "loss", "temperature"}`` dict per step.
    """
    n = len(caption_ids)
    if image_codes.ndim != 2 or image_codes.shape[0] != n:
        raise ValueError(f"image_codes must be (N={n}, n_codes); got {tuple(image_codes.shape)}")
    if n < 2:
        raise ValueError(f"a contrastive loss needs at least 2 pairs, got {n}")
    device = torch.device(device)
    # detach + no optimizer entry: the text embeddings are an input, not a parameter.
    text = text_table.detach().to(device=device, dtype=torch.float32)  # (T, D)
    txt_ids, txt_mask = pad_captions(caption_ids)  # (N, Lc)
    codes = image_codes.to(torch.long)  # (N, n_codes)
    k = int(codebook_size) if codebook_size is not None else int(codes.max()) + 1

    gen = torch.Generator().manual_seed(int(seed))  # init and batch order; CPU so runs agree across devices
    model = ImageCodeEmbedding(k, text.shape[1], generator=gen).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    b = min(int(batch_size), n)
    order, pos = torch.randperm(n, generator=gen), 0
    history: list[dict[str, float]] = []
    for step in range(1, int(steps) + 1):
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + b]  # (b,)
        pos += b
        with torch.no_grad():
            txt = bag_of_words(txt_ids[idx].to(device), txt_mask[idx].to(device), text)  # (b, D)
        img = model(codes[idx].to(device))  # (b, D)
        temperature = model.temperature()
        loss, _ = clip_loss(img, txt, model.log_temp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            # As in CLIP: clamp the parameter itself, so it cannot drift past the cap where its gradient is 0.
            model.log_temp.clamp_(max=MAX_LOG_TEMP)
        row = {metrics.LOSS: float(loss.detach()), metrics.TEMPERATURE: temperature}
        history.append({"step": step, **row})
        if on_step is not None:
            on_step(step, row)

    table = model.weight.detach().cpu()  # (K, D)
    scale = text.pow(2).mean().sqrt().cpu() / table.pow(2).mean().sqrt().clamp(min=1e-12)
    return table * scale, history
