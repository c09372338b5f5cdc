"""The two distillation losses: CompRess's similarity-distribution KL over anchor banks, and plain cosine."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class AnchorBank:
    """A FIFO memory of past embeddings (the anchors), filled in order and overwritten oldest first.

    Starts as uniform noise in +-1/sqrt(dim/3), as CompRess's memory, so the first ``size / batch`` steps
    compare against random anchors until real embeddings have replaced them.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator, device: torch.device) -> None:
        bound = 1.0 / math.sqrt(dim / 3)
        self.memory = (torch.rand(size, dim, generator=generator, device=device) * 2 - 1) * bound
        self.position = 0

    def logits(self, queries: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, size) similarities of L2-normalised ``queries`` with every anchor, over the temperature."""
        return queries @ self.memory.T / temperature

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor) -> None:
        rows = (torch.arange(len(embeddings), device=embeddings.device) + self.position) % len(self.memory)
        self.memory.index_copy_(0, rows, embeddings.detach())
        self.position = (self.position + len(embeddings)) % len(self.memory)


def similarity_kl(teacher: torch.Tensor, student: torch.Tensor, teacher_bank: AnchorBank,
                  student_bank: AnchorBank, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) of each image's similarity distribution over its network's anchors.

    ``teacher`` and ``student`` are L2-normalised (B, d); the banks are read before this batch is pushed.
    """
    target = F.softmax(teacher_bank.logits(teacher, temperature), dim=1)
    log_student = F.log_softmax(student_bank.logits(student, temperature), dim=1)
    return F.kl_div(log_student, target, reduction="batchmean")


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean 2 - 2 cos between each image's student and teacher embedding (the normalised MSE)."""
    return (2 - 2 * F.cosine_similarity(student, teacher, dim=-1)).mean()
