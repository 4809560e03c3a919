"""The dynamic memory bank and similarity distillation (method.md §2.4 with the fixes of §2.8, and
RDCD's relational KL, §3.4).

Teacher keys are L2-normalised and come from a frozen eval-mode teacher; the bank is a FIFO of
any size K fed by keys gathered from all ranks (no divisibility assumption, §2.8 bug 6). The
thesis prepends the current global batch's keys to the queue ("dynamic") and uses the soft-target
cross-entropy; RDCD's most probable form (§3.4) uses the queue alone and KL(p_t ‖ p_s).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.losses.distributed import gather, gather_with_grad


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
        """Write ``keys`` at the pointer, wrapping around; more keys than slots keeps the newest.

        Slots and counters are computed on the bank's device (``index_copy_`` at
        (pointer + i) mod K): no ``int(pointer)``, so the host never waits for the device.
        """
        keys = keys.detach().to(self.queue.dtype)
        n = keys.shape[0]
        if n >= self.size:
            self.queue.copy_(keys[-self.size :])  # oldest at 0, so the next write lands there
            self.pointer.fill_(0)
            self.filled.fill_(self.size)
            return
        slots = (self.pointer + torch.arange(n, device=self.queue.device)) % self.size
        self.queue.index_copy_(0, slots, keys)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def ordered(self) -> torch.Tensor:
        """The queue from oldest to newest (for inspection and tests)."""
        order = (self.pointer + torch.arange(self.size, device=self.queue.device)) % self.size
        return self.queue[order]


OBJECTIVES = ("cross_entropy", "kl")
OWN_KEY_COSINE = 1.0 - 1e-4  # a bank key this close to a row's teacher key is that row's own key


def _masked_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
               masked: torch.Tensor) -> torch.Tensor:
    """mean_i KL(softmax(t_i) ‖ softmax(s_i)) over the columns not ``masked`` in row i."""
    teacher_logits = teacher_logits.masked_fill(masked, float("-inf"))
    student_logits = student_logits.masked_fill(masked, float("-inf"))
    log_p_teacher = F.log_softmax(teacher_logits, dim=1)
    log_p_student = F.log_softmax(student_logits, dim=1)
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    return terms.masked_fill(masked, 0.0).sum(1).mean()


class SimilarityDistillation(nn.Module):
    """Match the student's similarity distribution over a bank A of teacher keys to the teacher's:

        p_t = softmax(t_i·A/τ_t),  p_s = softmax(s_i·A/τ_s)
        cross_entropy: L = mean_i Σ_j −p_t,j · log p_s,j     (thesis, §2.4: τ 0.05, weight 0.1)
        kl:            L = mean_i KL(p_t ‖ p_s)               (RDCD "KLD", §3.4: τ 0.04, weight 1)

    The two differ by the teacher entropy, a constant for the student (same gradients).
    ``prepend_current``: A = [keys of this global batch ; queue] (thesis) or A = queue (§3.4).

    ``nontarget_weight`` β > 0 adds β · KL(p̂_t ‖ p̂_s) over the *non-target* keys alone (both
    distributions renormalised without the row's own key(s): the key equal to t_i, twice with
    ``kd_target: clean``). At τ = 0.05 the teacher puts ~all its mass on a row's own key (cosine 1
    against 0.49 for the nearest other train image and 0.03 on average, for the quickstart's
    keys), which multiplies what it knows about the *other* images — which are near-copies, which
    merely alike — by 1 − p_t(own) ≈ 10⁻⁴; the separate term gives that knowledge its own weight
    (decoupled KD's non-target term, Zhao et al., CVPR 2022; measured worse at 160 steps,
    docs/quickstart.md, twelfth round).
    """

    def __init__(self, bank: MemoryBank, teacher_temperature: float = 0.05,
                 student_temperature: float = 0.05, *, prepend_current: bool = True,
                 objective: str = "cross_entropy", nontarget_weight: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"distillation objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("distillation temperatures must be > 0")
        self.bank = bank
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.prepend_current = prepend_current
        self.objective = objective
        if nontarget_weight < 0:
            raise ValueError("the non-target distillation weight must be >= 0")
        self.nontarget_weight = nontarget_weight

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, enqueue: bool = True) -> tuple[torch.Tensor, dict]:
        """``student`` (n, d) L2 features with grad; ``teacher`` (n, d) keys, no grad."""
        if student.shape[1] != teacher.shape[1] or teacher.shape[1] != self.bank.queue.shape[1]:
            raise ValueError(
                f"student feature {student.shape[1]}-d, teacher {teacher.shape[1]}-d and bank "
                f"{self.bank.queue.shape[1]}-d must agree (use kd_dim for a compact student)"
            )
        teacher = F.normalize(teacher.detach().float(), dim=1)
        keys = gather(teacher)
        queue = self.bank.queue.clone()
        bank = (torch.cat([keys, queue]) if self.prepend_current else queue).detach()
        with torch.autocast(student.device.type, enabled=False):  # fp32 logits: τ ≤ 0.05 under bf16
            teacher_similarity = teacher @ bank.T
            teacher_logits = teacher_similarity / self.teacher_temperature
            student_logits = student.float() @ bank.T / self.student_temperature
            log_p_teacher = F.log_softmax(teacher_logits, dim=1)
            log_p_student = F.log_softmax(student_logits, dim=1)
            p_teacher = log_p_teacher.exp()
            cross_entropy = -(p_teacher * log_p_student).sum(1).mean()
            kl = (p_teacher * (log_p_teacher - log_p_student)).sum(1).mean()
            stats = {"kd_ce": cross_entropy.detach(), "kd_kl": kl.detach()}
            loss = kl if self.objective == "kl" else cross_entropy
            if self.nontarget_weight:
                own = teacher_similarity > OWN_KEY_COSINE  # the row's own key(s)
                nontarget = _masked_kl(teacher_logits, student_logits, own)
                loss = loss + self.nontarget_weight * nontarget
                stats["kd_nontarget_kl"] = nontarget.detach()
        if enqueue:
            self.bank.enqueue(keys)
        return loss, stats


class KeyRegression(nn.Module):
    """Pull each student feature onto its own teacher key: L = mean_i (2 − 2·cos(s_i, t_i)).

    With ``kd_target: clean`` the key is the teacher's embedding of the *unedited* image, so every
    edited view is regressed onto the point the teacher gives the original — the copy-detection
    target itself — and, since keys of different images are far apart (cosine ≈ 0.1 for
    ``sscd-int8``), the term also spreads a near-collapsed random student (docs/training.md).
    No predictor: the descriptor itself moves into the teacher's space (as §2.4 distils it).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict]:
        teacher = F.normalize(teacher.detach().float(), dim=1)
        with torch.autocast(student.device.type, enabled=False):
            cosine = (F.normalize(student.float(), dim=1) * teacher).sum(1)
            loss = (2.0 - 2.0 * cosine).mean()
        return loss, {"kd_key_cos": cosine.mean().detach()}


class BatchRelationDistillation(nn.Module):
    """Match the student's similarities among the batch's views to the teacher's, in each one's
    own space (coordinate-free, as similarity-preserving KD), over the other views j ≠ i:

        p_t,ij = softmax_j(t_i·t_j/τ_t),  p_s,ij = softmax_j(s_i·s_j/τ_s),  L = mean_i KL(p_t,i ‖ p_s,i)

    Unlike the bank terms, the student never has to reach the teacher's coordinates: it learns
    which views the teacher finds alike (the twin view, and copies or near-copies among the other
    images) as soft InfoNCE targets. Gathered over ranks (student rows keep their gradients).
    """

    def __init__(self, teacher_temperature: float = 0.05, student_temperature: float = 0.05):
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("distillation temperatures must be > 0")
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict]:
        teacher = gather(F.normalize(teacher.detach().float(), dim=1))
        with torch.autocast(student.device.type, enabled=False):
            student = gather_with_grad(F.normalize(student.float(), dim=1))
            self_pairs = torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
            kl = _masked_kl(teacher @ teacher.T / self.teacher_temperature,
                            student @ student.T / self.student_temperature, self_pairs)
        return kl, {"kd_relation_kl": kl.detach()}
