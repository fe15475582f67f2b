"""The training state a checkpoint holds (model, AdamW, step, RNG), its optimizer, and its save and resume.

A checkpoint is everything a run needs to continue as if never interrupted: the data position follows from
the step (ablate.train.loop reads each step's sequences at positions derived from it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ablate.schema import OptimConfig
from ablate.train.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class TrainState:
    """What training changes and a checkpoint restores: the weights, AdamW's moments and the step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    """Optimizer steps taken."""

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's content, with the global RNG states (torch, numpy, Python) of this moment."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's content, the global RNG states included."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.step = state["step"]


def adamw(model: nn.Module, optim: OptimConfig, *, fused: bool) -> torch.optim.AdamW:
    """AdamW over the trainable parameters at optim.lr (the loop sets each step's LR)."""
    return torch.optim.AdamW(
        _param_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        fused=fused,
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices of the blocks; not norms, biases or embeddings (as open_lm and nanoGPT do)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and "tok_embeddings" not in name and not name.startswith("output"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resume(state: TrainState, path: Path) -> bool:
    """Restore `state` from the checkpoint at `path`; False (nothing changed) if there is none yet."""
    saved = load_checkpoint(path)
    if saved is None:
        return False
    state.load_state_dict(saved)
    return True


def save(state: TrainState, path: Path) -> None:
    """Write `state` to `path` atomically (a crash mid-save leaves the previous checkpoint)."""
    save_checkpoint(path, state.state_dict())
