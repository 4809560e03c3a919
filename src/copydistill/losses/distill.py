"""The dynamic memory bank and similarity distillation (method.md §2.4, with the fixes of §2.8).

Teacher keys are L2-normalised and come from a frozen eval-mode teacher; the bank is a FIFO of
any size K fed by keys gathered from all ranks (no divisibility assumption, §2.8 bug 6); the
current global batch's keys are prepended to the queue ("dynamic"). The loss is the soft-target
cross-entropy between teacher and student similarity distributions over that bank.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.losses.distributed import gather


class MemoryBank(nn.Module):
    """A FIFO queue of ``size`` unit vectors; persistent buffers, so checkpoints carry it."""

    def __init__(self, dim: int, size: int = 65_536, seed: int = 0):
        super().__init__()
        if size < 1:
            raise ValueError("memory bank size must be >= 1")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around; more keys than slots keeps the newest."""
        keys = keys.detach().to(self.queue.dtype)
        if keys.shape[0] >= self.size:
            self.queue.copy_(keys[-self.size :])  # oldest at 0, so the next write lands there
            self.pointer.fill_(0)
            self.filled.fill_(self.size)
            return
        start = int(self.pointer)
        end = start + keys.shape[0]
        if end <= self.size:
            self.queue[start:end] = keys
        else:
            first = self.size - start
            self.queue[start:] = keys[:first]
            self.queue[: end - self.size] = keys[first:]
        self.pointer.fill_(end % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + keys.shape[0]))

    def ordered(self) -> torch.Tensor:
        """The queue from oldest to newest (for inspection and tests)."""
        return torch.roll(self.queue, shifts=-int(self.pointer), dims=0)


class SimilarityDistillation(nn.Module):
    """L = mean_i Σ_j −softmax(t_i·A/τ_t)_j · log softmax(s_i·A/τ_s)_j over A = [keys_glob ; queue].

    Equals KL(p_t ‖ p_s) plus the teacher entropy (constant for the student). The seed's weight is
    0.1 (its ``/10`` scale) and τ_t = τ_s = 0.05 (§2.4, §2.7).
    """

    def __init__(self, bank: MemoryBank, teacher_temperature: float = 0.05,
                 student_temperature: float = 0.05):
        super().__init__()
        self.bank = bank
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, enqueue: bool = True) -> tuple[torch.Tensor, dict]:
        """``student`` (n, d) L2 features with grad; ``teacher`` (n, d) L2 keys, no grad."""
        if student.shape[1] != teacher.shape[1] or teacher.shape[1] != self.bank.queue.shape[1]:
            raise ValueError(
                f"student feature {student.shape[1]}-d, teacher {teacher.shape[1]}-d and bank "
                f"{self.bank.queue.shape[1]}-d must agree (use kd_dim for a compact student)"
            )
        teacher = F.normalize(teacher.detach().float(), dim=1)
        keys = gather(teacher)
        bank = torch.cat([keys, self.bank.queue.clone()]).detach()
        p_teacher = F.softmax(teacher @ bank.T / self.teacher_temperature, dim=1)
        log_p_student = F.log_softmax(student.float() @ bank.T / self.student_temperature, dim=1)
        cross_entropy = -(p_teacher * log_p_student).sum(1).mean()
        teacher_entropy = -(p_teacher * torch.log(p_teacher.clamp(min=1e-12))).sum(1).mean()
        if enqueue:
            self.bank.enqueue(keys)
        return cross_entropy, {"kd_ce": cross_entropy.detach(), "kd_kl": (cross_entropy - teacher_entropy).detach()}
