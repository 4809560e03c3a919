"""Losses against literal re-implementations of method.md: InfoNCE + differential entropy (§1.2),
DirectCLR (§2.6), the memory bank and similarity distillation (§2.4 with the §2.8 fixes), RDCD's
relational KL (§3.4) and MoCo with the hard-negative term (§3.3), and the contrastive mixup (§1.4).

The references below are deliberately naive Python loops over rows and columns, in float64, so
that they read like the formulas of the method document rather than like the vectorised code.
"""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from copydistill.augment.mixup import ContrastiveMixup
from copydistill.losses.contrastive import DirectCLR, InfoNCEEntropy, match_matrix
from copydistill.losses.distill import BatchRelationDistillation, MemoryBank, SimilarityDistillation
from copydistill.losses.moco import MoCoHardNegative


# --------------------------------------------------------------------------------------------
# InfoNCE + entropy (§1.2)
# --------------------------------------------------------------------------------------------


def reference_infonce(z: torch.Tensor, match: torch.Tensor, tau: float, lam: float) -> tuple[float, dict]:
    """§1.2, single process, written as loops. ``z`` (n, d) unit rows; ``match`` (n, n) bool."""
    z = z.double()
    n = z.shape[0]
    S = [[float(z[i] @ z[j]) for j in range(n)] for i in range(n)]
    M = [[bool(match[i, j]) for j in range(n)] for i in range(n)]
    row_losses, nearest, pos_sims, neg_sims = [], [], [], []
    for i in range(n):
        negs = [k for k in range(n) if not M[i][k]]
        poss = [j for j in range(n) if M[i][j] and j != i]
        neg_sum = sum(math.exp(S[i][k] / tau) for k in negs)
        terms = []
        for j in poss:
            e = math.exp(S[i][j] / tau)
            terms.append(-math.log(e / (e + neg_sum + 1e-6)))
            pos_sims.append(S[i][j])
        if terms:
            row_losses.append(sum(terms) / len(terms))
        neg_sims.extend(S[i][k] for k in negs)
        masked = [S[i][k] if not M[i][k] else -100.0 for k in range(n)]
        nearest.append(max(masked))
    nce = sum(row_losses) / len(row_losses)
    distances = [math.sqrt(max(2 - 2 * s, 1e-6)) for s in nearest]
    entropy = -sum(math.log(d) for d in distances) / n
    centre = [sum(float(z[i, c]) for i in range(n)) / n for c in range(z.shape[1])]
    stats = {
        "nce": nce,
        "entropy": entropy,
        "positive_sim": sum(pos_sims) / len(pos_sims) if pos_sims else float("nan"),
        "negative_sim": sum(neg_sims) / len(neg_sims) if neg_sims else float("nan"),
        "nearest_negative_sim": sum(nearest) / n,
        "center_norm": math.sqrt(sum(c * c for c in centre)),
    }
    return nce + lam * entropy, stats


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _two_view_match(b: int) -> torch.Tensor:
    ids = torch.cat([torch.arange(b), torch.arange(b)])
    return ids[:, None] == ids[None, :]


def _assert_matches_reference(z, match, tau, lam):
    loss, stats = InfoNCEEntropy(temperature=tau, entropy_weight=lam)(z, match)
    ref_loss, ref_stats = reference_infonce(z, match, tau, lam)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-9, abs=1e-9)
    assert set(stats) == set(ref_stats)
    for key, value in ref_stats.items():
        assert float(stats[key]) == pytest.approx(value, rel=1e-9, abs=1e-9), key
    return loss, stats


@pytest.mark.parametrize("tau,lam", [(0.05, 30.0), (0.1, 10.0), (0.5, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infonce_two_views_matches_loop(tau, lam, seed):
    z = _unit(8, 6, seed)  # two views of 4 instances: [v0 of 0..3; v1 of 0..3]
    match = _two_view_match(4)
    assert torch.equal(match_matrix(torch.cat([torch.arange(4), torch.arange(4)])), match)
    _assert_matches_reference(z, match, tau, lam)


@pytest.mark.parametrize("seed", [0, 3])
def test_infonce_mixup_match_row_with_two_positives(seed):
    z = _unit(8, 5, seed)
    match = _two_view_match(4)
    match[0, 7] = match[7, 0] = True  # view0 of image 0 was mixed with view1 of image 3 (§1.4)
    assert int(match[0].sum()) - 1 == 2  # row 0 has two positives
    _, stats = _assert_matches_reference(z, match, 0.1, 5.0)
    # the per-row *mean* over positives (not the sum): compare with the loop once more by hand
    S = z @ z.T
    e = torch.exp(S[0] / 0.1)
    neg = torch.exp(S[0, ~match[0]] / 0.1).sum()
    row0 = (-torch.log(e[4] / (e[4] + neg + 1e-6)) - torch.log(e[7] / (e[7] + neg + 1e-6))) / 2
    others = []
    for i in range(1, 8):
        pos = [j for j in range(8) if match[i, j] and j != i]
        negs = torch.exp(S[i, ~match[i]] / 0.1).sum()
        others.append(sum(-torch.log(torch.exp(S[i, j] / 0.1) / (torch.exp(S[i, j] / 0.1) + negs + 1e-6))
                          for j in pos) / len(pos))
    assert float(stats["nce"]) == pytest.approx(float((row0 + sum(others)) / 8), rel=1e-9)


def test_infonce_entropy_weight_zero_is_plain_nce():
    z = _unit(8, 6, 4)
    match = _two_view_match(4)
    loss, stats = InfoNCEEntropy(0.05, entropy_weight=0.0)(z, match)
    assert float(loss) == pytest.approx(float(stats["nce"]), rel=1e-12)
    assert float(loss) == pytest.approx(reference_infonce(z, match, 0.05, 0.0)[0], rel=1e-9)
    loss30, stats30 = InfoNCEEntropy(0.05, entropy_weight=30.0)(z, match)
    assert float(loss30) == pytest.approx(float(stats["nce"] + 30 * stats30["entropy"]), rel=1e-9)


def test_nearest_negative_uses_minus_100_mask():
    # the negatives of every row are (nearly) antipodal: the hardest negative is at ~ -1, far below
    # the masked positives (1.0) and below 0 (a zero mask would be wrong)
    a = torch.tensor([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)]], dtype=torch.float64)
    z = torch.cat([a[:1], -a[:1], a[1:], -a[1:]])  # [v0 of A, v0 of B, v1 of A, v1 of B]
    match = _two_view_match(2)
    _, stats = _assert_matches_reference(z, match, 0.1, 1.0)
    S = z @ z.T
    expected = [max(float(S[i, k]) for k in range(4) if not match[i, k]) for i in range(4)]
    assert all(v < -0.99 for v in expected)
    assert float(stats["nearest_negative_sim"]) == pytest.approx(sum(expected) / 4, rel=1e-12)


def test_row_without_negatives_gets_minus_100():
    # every row matches every row: no negatives, so s* = -100 and d = sqrt(202) (masked max)
    z = _unit(4, 3, 5)
    match = torch.ones(4, 4, dtype=torch.bool)
    loss, stats = InfoNCEEntropy(0.1, 2.0)(z, match)
    assert float(stats["nearest_negative_sim"]) == pytest.approx(-100.0)
    assert float(stats["entropy"]) == pytest.approx(-math.log(math.sqrt(202.0)), rel=1e-9)
    ref_loss, _ = reference_infonce(z, match, 0.1, 2.0)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-9)


def test_infonce_gradients_flow_and_float32_agrees():
    z64 = _unit(8, 6, 7)
    z = z64.float().requires_grad_(True)
    loss, _ = InfoNCEEntropy(0.05, 30.0)(z, _two_view_match(4))
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.norm() > 0
    ref, _ = reference_infonce(z64, _two_view_match(4), 0.05, 30.0)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-4)


# --------------------------------------------------------------------------------------------
# DirectCLR (§2.6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdim", [1, 3, 7])
def test_directclr_is_infonce_on_renormalised_leading_subvector(subdim):
    z = _unit(8, 8, 8)
    match = _two_view_match(4)
    loss, stats = DirectCLR(subdim=subdim, temperature=0.1)(z, match)
    sub = F.normalize(z[:, :subdim], dim=1)
    expected, _ = InfoNCEEntropy(0.1, entropy_weight=0.0)(sub, match)
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(loss) == pytest.approx(reference_infonce(sub, match, 0.1, 0.0)[0], rel=1e-9)
    assert float(stats["directclr"]) == pytest.approx(float(loss), rel=1e-12)


@pytest.mark.parametrize("subdim", [8, 9])
def test_directclr_subdim_not_smaller_than_dims_raises(subdim):
    with pytest.raises(ValueError):
        DirectCLR(subdim=subdim)(_unit(8, 8, 0), _two_view_match(4))


# --------------------------------------------------------------------------------------------
# MemoryBank (§2.4, FIFO of any size K, §2.8 bug 6)
# --------------------------------------------------------------------------------------------


def _numbered_keys(start: int, count: int, dim: int = 3) -> torch.Tensor:
    """Keys whose first coordinate is their global serial number (exact in float32)."""
    keys = torch.zeros(count, dim)
    keys[:, 0] = torch.arange(start, start + count, dtype=torch.float32)
    keys[:, 1] = 1.0
    return keys


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 50), batches=st.lists(st.integers(1, 70), min_size=1, max_size=12))
def test_memory_bank_is_a_fifo_of_the_last_k_keys(size, batches):
    bank = MemoryBank(dim=3, size=size, seed=1)
    initial = bank.queue.clone()
    model: deque[float] = deque(maxlen=size)
    serial = 0
    pointer = 0
    for n in batches:
        keys = _numbered_keys(serial, n)
        bank.enqueue(keys)
        model.extend(range(serial, serial + n))
        serial += n
        pointer = 0 if n >= size else (pointer + n) % size
        filled = min(size, serial)
        assert int(bank.filled) == filled
        assert int(bank.pointer) == pointer
        assert 0 <= int(bank.pointer) < size
        ordered = bank.ordered()
        assert ordered.shape == (size, 3)
        assert ordered[-filled:, 0].tolist() == list(model)
        # the newest key sits just before the pointer: the next write overwrites the oldest
        assert int(bank.queue[(int(bank.pointer) - 1) % size, 0]) == serial - 1
        if filled < size:  # untouched slots still hold the initial unit vectors
            assert torch.equal(ordered[: size - filled], initial[filled:])
        else:
            assert bank.queue[:, 0].sort().values.tolist() == sorted(model)


def test_memory_bank_batch_larger_than_k_keeps_newest():
    bank = MemoryBank(dim=3, size=5)
    bank.enqueue(_numbered_keys(0, 2))
    bank.enqueue(_numbered_keys(2, 12))
    assert bank.ordered()[:, 0].tolist() == [9, 10, 11, 12, 13]
    assert int(bank.filled) == 5
    bank.enqueue(_numbered_keys(14, 2))
    assert bank.ordered()[:, 0].tolist() == [11, 12, 13, 14, 15]


def test_memory_bank_initial_state_and_bad_size():
    bank = MemoryBank(dim=4, size=10, seed=3)
    assert torch.allclose(bank.queue.norm(dim=1), torch.ones(10))
    assert int(bank.pointer) == 0 and int(bank.filled) == 0
    assert torch.equal(bank.queue, MemoryBank(dim=4, size=10, seed=3).queue)
    with pytest.raises(ValueError):
        MemoryBank(dim=4, size=0)


def test_memory_bank_state_dict_round_trip():
    bank = MemoryBank(dim=3, size=7, seed=0)
    for start, n in [(0, 3), (3, 5), (8, 2)]:
        bank.enqueue(_numbered_keys(start, n))
    state = bank.state_dict()
    assert {"queue", "pointer", "filled"} <= set(state)
    fresh = MemoryBank(dim=3, size=7, seed=99)
    assert not torch.equal(fresh.queue, bank.queue)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, bank.queue)
    assert int(fresh.pointer) == int(bank.pointer) == 10 % 7
    assert int(fresh.filled) == 7
    fresh.enqueue(_numbered_keys(10, 1))
    bank.enqueue(_numbered_keys(10, 1))
    assert torch.equal(fresh.ordered(), bank.ordered())
    # nested in a distillation module (as in the LightningModule): the bank travels with it
    distill = SimilarityDistillation(bank)
    assert {"bank.queue", "bank.pointer", "bank.filled"} <= set(distill.state_dict())


# --------------------------------------------------------------------------------------------
# SimilarityDistillation (§2.4 with §2.8 bug 1 fixed)
# --------------------------------------------------------------------------------------------


def _hand_distillation(student, teacher, queue, tau_t, tau_s):
    t = F.normalize(teacher.double(), dim=1)
    s = student.double()
    bank = torch.cat([t, queue.double()])
    n, m = s.shape[0], bank.shape[0]
    ce, kl = 0.0, 0.0
    for i in range(n):
        lt = [float(t[i] @ bank[j]) / tau_t for j in range(m)]
        ls = [float(s[i] @ bank[j]) / tau_s for j in range(m)]
        zt = max(lt)
        zs = max(ls)
        norm_t = sum(math.exp(v - zt) for v in lt)
        norm_s = sum(math.exp(v - zs) for v in ls)
        pt = [math.exp(v - zt) / norm_t for v in lt]
        log_ps = [v - zs - math.log(norm_s) for v in ls]
        ce += -sum(p * q for p, q in zip(pt, log_ps))
        kl += sum(p * (math.log(p) - q) for p, q in zip(pt, log_ps) if p > 0)
    return ce / n, kl / n


@pytest.mark.parametrize("tau_t,tau_s", [(0.05, 0.05), (0.04, 0.1), (0.2, 0.07)])
def test_similarity_distillation_against_hand_computation(tau_t, tau_s):
    torch.manual_seed(0)
    bank = MemoryBank(dim=6, size=10, seed=2)
    bank.enqueue(F.normalize(torch.randn(4, 6), dim=1))  # a partly filled queue
    queue_before = bank.queue.clone()
    student = F.normalize(torch.randn(5, 6), dim=1)
    teacher = 3.0 * torch.randn(5, 6)  # raw teacher outputs: normalised by the loss (§2.8 bug 1)
    distill = SimilarityDistillation(bank, teacher_temperature=tau_t, student_temperature=tau_s)
    loss, stats = distill(student, teacher)
    ce, kl = _hand_distillation(student, teacher, queue_before, tau_t, tau_s)
    assert float(loss) == pytest.approx(ce, rel=1e-4, abs=1e-5)
    assert float(stats["kd_ce"]) == pytest.approx(ce, rel=1e-4, abs=1e-5)
    assert float(stats["kd_kl"]) == pytest.approx(kl, rel=1e-3, abs=1e-4)
    assert float(stats["kd_kl"]) >= -1e-6


def test_similarity_distillation_prepends_then_enqueues_keys():
    torch.manual_seed(1)
    bank = MemoryBank(dim=4, size=9, seed=0)
    distill = SimilarityDistillation(bank)
    teacher1 = torch.randn(3, 4)
    queue0 = bank.queue.clone()
    student = F.normalize(torch.randn(3, 4), dim=1)
    loss1, _ = distill(student, teacher1)
    # step 1 used [keys1; initial queue] (own key in the bank), then enqueued keys1
    ce1, _ = _hand_distillation(student, teacher1, queue0, 0.05, 0.05)
    assert float(loss1) == pytest.approx(ce1, rel=1e-4)
    assert torch.allclose(bank.ordered()[-3:], F.normalize(teacher1, dim=1))
    assert int(bank.pointer) == 3 and int(bank.filled) == 3
    teacher2 = torch.randn(3, 4)
    queue1 = bank.queue.clone()
    loss2, _ = distill(student, teacher2)
    ce2, _ = _hand_distillation(student, teacher2, queue1, 0.05, 0.05)
    assert float(loss2) == pytest.approx(ce2, rel=1e-4)
    assert torch.allclose(bank.ordered()[-6:], F.normalize(torch.cat([teacher1, teacher2]), dim=1))
    # enqueue=False (e.g. validation) leaves the bank alone
    before = bank.queue.clone()
    distill(student, torch.randn(3, 4), enqueue=False)
    assert torch.equal(bank.queue, before) and int(bank.pointer) == 6


@pytest.mark.parametrize("tau", [0.05, 0.2])
def test_similarity_distillation_zero_gradient_when_student_is_teacher(tau):
    torch.manual_seed(2)
    bank = MemoryBank(dim=8, size=16, seed=0)
    bank.enqueue(F.normalize(torch.randn(10, 8), dim=1))
    keys = F.normalize(torch.randn(6, 8), dim=1)
    student = keys.clone().requires_grad_(True)
    loss, stats = SimilarityDistillation(bank, tau, tau)(student, keys)
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.norm() < 1e-6
    assert abs(float(stats["kd_kl"])) < 1e-5
    # ... but not when the temperatures differ (sanity: the check above is not vacuous)
    student2 = keys.clone().requires_grad_(True)
    loss2, _ = SimilarityDistillation(MemoryBank(8, 16, seed=0), tau, 2 * tau)(student2, keys)
    (grad2,) = torch.autograd.grad(loss2, student2)
    assert grad2.norm() > 1e-3


def test_similarity_distillation_dims_mismatch_raises():
    bank = MemoryBank(dim=8, size=4)
    distill = SimilarityDistillation(bank)
    with pytest.raises(ValueError):
        distill(F.normalize(torch.randn(2, 6), dim=1), torch.randn(2, 8))
    with pytest.raises(ValueError):
        distill(F.normalize(torch.randn(2, 6), dim=1), torch.randn(2, 6))  # bank is 8-d
    with pytest.raises(ValueError):
        distill(F.normalize(torch.randn(2, 8), dim=1), torch.randn(2, 6))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), tau_t=st.floats(0.02, 1.0), tau_s=st.floats(0.02, 1.0),
       scale=st.floats(0.1, 10.0))
def test_similarity_distillation_kl_is_non_negative(seed, tau_t, tau_s, scale):
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(dim=5, size=7, seed=seed)
    student = F.normalize(torch.randn(4, 5, generator=g), dim=1)
    teacher = scale * torch.randn(4, 5, generator=g)
    loss, stats = SimilarityDistillation(bank, tau_t, tau_s)(student, teacher)
    assert torch.isfinite(loss)
    assert float(stats["kd_kl"]) >= -1e-5
    assert float(stats["kd_ce"]) >= float(stats["kd_kl"]) - 1e-5  # CE = KL + H(p_t), H >= 0


def _hand_nontarget_kl(student, teacher, queue, tau_t, tau_s):
    """KL over each row's non-target keys: every bank key but those equal to the row's own key."""
    t = F.normalize(teacher.double(), dim=1)
    s = student.double()
    bank = torch.cat([t, queue.double()])
    total = 0.0
    for i in range(s.shape[0]):
        others = [j for j in range(bank.shape[0]) if not torch.allclose(bank[j], t[i])]
        lt = [float(t[i] @ bank[j]) / tau_t for j in others]
        ls = [float(s[i] @ bank[j]) / tau_s for j in others]
        log_zt = math.log(sum(math.exp(v) for v in lt))
        log_zs = math.log(sum(math.exp(v) for v in ls))
        total += sum(math.exp(a - log_zt) * ((a - log_zt) - (b - log_zs)) for a, b in zip(lt, ls))
    return total / s.shape[0]


@pytest.mark.parametrize("tau_t,tau_s,beta", [(0.05, 0.05, 1.0), (0.1, 0.05, 4.0)])
def test_nontarget_distillation_adds_the_kl_without_each_rows_own_keys(tau_t, tau_s, beta):
    torch.manual_seed(3)
    queue = MemoryBank(dim=6, size=8, seed=4).queue.clone()
    student = F.normalize(torch.randn(6, 6), dim=1)
    # rows 0-2 and 3-5 share keys (kd_target: clean's two views of one image): both copies of a
    # row's key are its own, neither is a non-target
    teacher = torch.randn(3, 6).repeat(2, 1)
    plain = SimilarityDistillation(MemoryBank(6, 8, seed=4), tau_t, tau_s)
    decoupled = SimilarityDistillation(MemoryBank(6, 8, seed=4), tau_t, tau_s, nontarget_weight=beta)
    base, _ = plain(student, teacher)
    loss, stats = decoupled(student, teacher)
    expected = _hand_nontarget_kl(student, teacher, queue, tau_t, tau_s)
    assert float(stats["kd_nontarget_kl"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(loss) == pytest.approx(float(base) + beta * expected, rel=1e-4)
    # a student equal to the teacher (same temperatures) has nothing left to learn from it
    same = SimilarityDistillation(MemoryBank(6, 8, seed=4), tau_t, tau_t, nontarget_weight=beta)
    _, stats_same = same(F.normalize(teacher, dim=1), teacher)
    assert float(stats_same["kd_nontarget_kl"]) < 1e-5


def test_similarity_distillation_rejects_bad_settings():
    with pytest.raises(ValueError, match="objective"):
        SimilarityDistillation(MemoryBank(4, 4), objective="mse")
    with pytest.raises(ValueError, match="temperature"):
        SimilarityDistillation(MemoryBank(4, 4), 0.0, 0.05)
    with pytest.raises(ValueError, match="non-target"):
        SimilarityDistillation(MemoryBank(4, 4), nontarget_weight=-1.0)


# --------------------------------------------------------------------------------------------
# relational KL (RDCD "KLD", §3.4's most probable definition)
# --------------------------------------------------------------------------------------------


def _hand_relational_kl(student, teacher, queue, tau):
    """KL(p_t ‖ p_s) over the queue alone (no current keys), batch mean, as loops."""
    t = F.normalize(teacher.double(), dim=1)
    s, bank = student.double(), queue.double()
    total = 0.0
    for i in range(s.shape[0]):
        lt = [float(t[i] @ k) / tau for k in bank]
        ls = [float(s[i] @ k) / tau for k in bank]
        log_zt = max(lt) + math.log(sum(math.exp(v - max(lt)) for v in lt))
        log_zs = max(ls) + math.log(sum(math.exp(v - max(ls)) for v in ls))
        total += sum(math.exp(a - log_zt) * ((a - log_zt) - (b - log_zs)) for a, b in zip(lt, ls))
    return total / s.shape[0]


def test_relational_kl_against_hand_computation_then_enqueues():
    torch.manual_seed(4)
    bank = MemoryBank(dim=5, size=8, seed=3)
    kld = SimilarityDistillation(bank, 0.04, 0.04, prepend_current=False, objective="kl")
    student = F.normalize(torch.randn(3, 5), dim=1)
    teacher = 2.0 * torch.randn(3, 5)
    queue0 = bank.queue.clone()
    loss, stats = kld(student, teacher)
    expected = _hand_relational_kl(student, teacher, queue0, 0.04)
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert float(stats["kd_kl"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(stats["kd_ce"]) > float(stats["kd_kl"])  # CE = KL + teacher entropy > 0
    # the queue alone was the bank (the current keys were not prepended), then they were enqueued
    thesis, _ = SimilarityDistillation(MemoryBank(5, 8, seed=3), 0.04, 0.04, objective="kl")(student, teacher)
    assert float(thesis) != pytest.approx(expected, rel=1e-3)
    assert torch.allclose(bank.ordered()[-3:], F.normalize(teacher, dim=1))
    assert int(bank.pointer) == 3
    teacher2 = torch.randn(3, 5)
    queue1 = bank.queue.clone()
    loss2, _ = kld(student, teacher2)
    assert float(loss2) == pytest.approx(_hand_relational_kl(student, teacher2, queue1, 0.04), rel=1e-4, abs=1e-5)


def test_relational_kl_is_zero_with_zero_gradient_when_student_is_teacher():
    torch.manual_seed(5)
    bank = MemoryBank(dim=8, size=16, seed=1)
    keys = F.normalize(torch.randn(6, 8), dim=1)
    student = keys.clone().requires_grad_(True)
    loss, _ = SimilarityDistillation(bank, 0.04, 0.04, prepend_current=False, objective="kl")(student, keys)
    (grad,) = torch.autograd.grad(loss, student)
    assert abs(float(loss.detach())) < 1e-6 and grad.norm() < 1e-5
    other = F.normalize(torch.randn(6, 8), dim=1)
    loss2, _ = SimilarityDistillation(MemoryBank(8, 16, seed=1), 0.04, 0.04, prepend_current=False,
                                      objective="kl")(other, keys)
    assert float(loss2) > 1e-2


# --------------------------------------------------------------------------------------------
# MoCo + hard negatives (§3.3)
# --------------------------------------------------------------------------------------------


def _hand_moco(q, k, queue, tau, lam):
    """§3.3 as loops: CE to label 0 over [q·k | q·Q]/T, and −λ mean log max(1 − max_j q·Q_j, 1e-3)."""
    nce, hn = 0.0, 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[i]) / tau] + [float(q[i] @ key) / tau for key in queue]
        top = max(logits)
        nce += -(logits[0] - top - math.log(sum(math.exp(v - top) for v in logits)))
        hardest = max(float(q[i] @ key) for key in queue)
        hn += -math.log(max(1 - hardest, 1e-3))
    n = q.shape[0]
    return nce / n + lam * hn / n, nce / n, hn / n


@pytest.mark.parametrize("tau,lam", [(0.07, 5.0), (0.2, 0.0), (0.5, 1.5)])
def test_moco_hard_negative_against_hand_computation(tau, lam):
    queue = MemoryBank(dim=4, size=6, seed=0)
    q, k = _unit(3, 4, 1), _unit(3, 4, 2)
    before = queue.queue.clone()
    loss, stats = MoCoHardNegative(queue, tau, lam)(q, k)
    expected, nce, hn = _hand_moco(q, k, before.double(), tau, lam)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(stats["nce"]) == pytest.approx(nce, rel=1e-6)
    assert float(stats["hard_negative"]) == pytest.approx(hn, rel=1e-6)
    assert float(stats["positive_sim"]) == pytest.approx(float((q * k).sum(1).mean()), rel=1e-9)
    sims = q @ before.double().T
    assert float(stats["hardest_negative_sim"]) == pytest.approx(float(sims.max(1).values.mean()), rel=1e-6)
    assert float(stats["negative_sim"]) == pytest.approx(float(sims.mean()), rel=1e-6)
    # then the keys were enqueued (FIFO), after scoring against the old queue
    assert torch.allclose(queue.ordered()[-3:].double(), k, atol=1e-6)
    assert int(queue.pointer) == 3 and int(queue.filled) == 3


def test_moco_hard_negative_term_clamps_at_one_thousandth():
    # a queue key identical to the query: 1 − s = 0 → clamped to 1e-3, −log(1e-3) = 6.908
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    queue = MemoryBank(dim=2, size=2, seed=0)
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    _, stats = MoCoHardNegative(queue, 0.07, 5.0)(q, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert float(stats["hard_negative"]) == pytest.approx(-math.log(1e-3), rel=1e-9)
    assert float(stats["hardest_negative_sim"]) == pytest.approx(1.0)


def test_moco_gradients_reach_queries_only_and_queue_snapshot_is_safe():
    queue = MemoryBank(dim=6, size=5, seed=2)
    q = _unit(4, 6, 3).float().requires_grad_(True)
    k = _unit(4, 6, 4).float().requires_grad_(True)
    loss, _ = MoCoHardNegative(queue, 0.07, 5.0)(q, k)  # enqueues 4 of 5 slots in place
    loss.backward()  # the scores used a copy of the queue, so the in-place write is harmless
    assert torch.isfinite(q.grad).all() and q.grad.norm() > 0
    assert k.grad is None
    assert not queue.queue.requires_grad
    # enqueue=False (e.g. evaluation) leaves the queue alone
    before = queue.queue.clone()
    MoCoHardNegative(queue)(q.detach(), k.detach(), enqueue=False)
    assert torch.equal(queue.queue, before) and int(queue.pointer) == 4


def test_contrastive_and_distillation_losses_stay_float32_under_bf16_autocast():
    q, k = _unit(4, 8, 5).float(), _unit(4, 8, 6).float()
    student, teacher = _unit(4, 8, 7).float(), _unit(4, 8, 8).float()

    ids = torch.tensor([0, 1, 0, 1])

    def losses():
        moco, _ = MoCoHardNegative(MemoryBank(8, 16, seed=0), 0.07, 5.0)(q, k)
        kld, _ = SimilarityDistillation(MemoryBank(8, 16, seed=1), 0.04, 0.04, prepend_current=False,
                                        objective="kl")(student, teacher)
        nce, _ = InfoNCEEntropy(0.05, 30.0)(q, match_matrix(ids))  # SSCD's InfoNCE + KoLeo too
        return moco, kld, nce

    reference = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = losses()
    for a, b in zip(reference, autocast):
        assert b.dtype == torch.float32 and float(b) == pytest.approx(float(a), rel=1e-6)


def test_moco_rejects_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="temperature"):
        MoCoHardNegative(MemoryBank(4, 4), temperature=0.0)
    with pytest.raises(ValueError, match="hard-negative"):
        MoCoHardNegative(MemoryBank(4, 4), hn_weight=-1.0)
    with pytest.raises(ValueError, match="queue"):
        MoCoHardNegative(MemoryBank(4, 4))(_unit(2, 6, 0), _unit(2, 6, 1))
    with pytest.raises(ValueError):
        MoCoHardNegative(MemoryBank(4, 4))(_unit(2, 4, 0), _unit(3, 4, 1))


# --------------------------------------------------------------------------------------------
# ContrastiveMixup (§1.4)
# --------------------------------------------------------------------------------------------


def _views(b: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2 * b, 3, size, size, generator=g)


@pytest.mark.parametrize("switch_prob", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("b", [2, 4])
def test_mixup_prob_one_mixes_every_row_with_reversed_partner(switch_prob, b):
    torch.manual_seed(0)
    x = _views(b, size=32)
    m = 2 * b
    result = ContrastiveMixup(mix_prob=1.0, switch_prob=switch_prob)(x, torch.Generator().manual_seed(1))
    assert result.images.shape == x.shape and result.images.dtype == x.dtype
    assert torch.equal(x, _views(b, size=32))  # input left untouched
    assert result.mixed.all()
    source = torch.arange(m) % b
    assert torch.allclose(result.targets.sum(1), torch.ones(m))
    for i in range(m):
        j = m - 1 - i
        lam = float(result.targets[i, source[i]])
        assert 0.0 < lam <= 1.0
        assert float(result.targets[i, source[j]]) == pytest.approx(1 - lam, abs=1e-6)
        out = result.images[i]
        blend = lam * x[i] + (1 - lam) * x[j]
        is_mixup = switch_prob == 0.0 or (switch_prob < 1.0 and torch.allclose(out, blend, atol=1e-6))
        if is_mixup:
            assert torch.allclose(out, blend, atol=1e-6), i
        else:  # CutMix: a box from the partner pasted in, λ = kept area
            from_partner = (out == x[j]).all(0) & (out != x[i]).any(0)
            assert torch.equal(out, torch.where(from_partner, x[j], x[i])), i
            assert 1 - float(from_partner.float().mean()) == pytest.approx(lam, abs=1e-6)
            rows = from_partner.any(1).nonzero().flatten()
            cols = from_partner.any(0).nonzero().flatten()
            if len(rows):  # a rectangle
                box = from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
                assert box.all()
    # match: symmetric, True diagonal, each mixed row linked to both its sources
    match = result.match
    assert torch.equal(match, match.T)
    assert match.diagonal().all()
    for i in range(b):
        partner = m - 1 - i
        assert partner == b + (b - 1 - i)  # view0 of image i <-> view1 of image B-1-i
        assert source[partner] == b - 1 - i
        assert match[i, partner] and match[partner, i]
        assert match[i, b + i]  # the other view of its own image
        assert match[i, b - 1 - i]  # view0 of the partner's image shares that image's content
    for i in range(m):
        for k in range(m):
            shares = bool({int(source[i]), int(source[m - 1 - i])} & {int(source[k]), int(source[m - 1 - k])})
            assert bool(match[i, k]) == shares


def test_mixup_prob_zero_is_identity():
    x = _views(4)
    result = ContrastiveMixup(mix_prob=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(result.images, x)
    assert not result.mixed.any()
    ids = torch.arange(8) % 4
    assert torch.equal(result.targets, F.one_hot(ids, 4).float())
    assert torch.equal(result.match, ids[:, None] == ids[None, :])
    assert torch.equal(result.match, _two_view_match(4))


def test_mixup_uint8_keeps_dtype_and_is_reproducible_with_generator():
    x = (_views(4, size=16) * 255).to(torch.uint8)
    torch.manual_seed(5)
    a = ContrastiveMixup(mix_prob=0.5)(x, torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    b = ContrastiveMixup(mix_prob=0.5)(x, torch.Generator().manual_seed(3))
    assert a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.mixed, b.mixed)
    assert torch.equal(a.images[~a.mixed], x[~a.mixed])


def test_mixup_generator_alone_determines_the_mix():
    x = _views(4, size=16)
    torch.manual_seed(1)
    a = ContrastiveMixup(mix_prob=1.0)(x, torch.Generator().manual_seed(3))
    torch.manual_seed(2)  # a different global RNG state, same generator
    b = ContrastiveMixup(mix_prob=1.0)(x, torch.Generator().manual_seed(3))
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.images, b.images)


def test_key_regression_is_two_minus_two_cosine_and_pulls_towards_the_key():
    from copydistill.losses.distill import KeyRegression

    keys = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    loss, stats = KeyRegression()(keys.clone(), keys * 3.0)  # teacher keys are normalised inside
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and float(stats["kd_key_cos"]) == pytest.approx(1.0)
    assert float(KeyRegression()(-keys, keys)[0]) == pytest.approx(4.0, abs=1e-5)
    student = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_()
    before, _ = KeyRegression()(student, keys)
    before.backward()
    moved = torch.nn.functional.normalize(student.detach() - 0.1 * student.grad, dim=1)
    assert float(KeyRegression()(moved, keys)[0]) < float(before)


def test_batch_relation_distillation_against_a_loop_and_coordinate_free():
    torch.manual_seed(0)
    teacher = F.normalize(torch.randn(6, 8), dim=1)
    student = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()  # another width: no shared space
    loss, stats = BatchRelationDistillation(0.1, 0.2)(student, teacher)
    expected = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        p_t = torch.softmax(torch.stack([teacher[i] @ teacher[j] / 0.1 for j in others]), 0)
        log_p_s = torch.log_softmax(torch.stack([student[i] @ student[j] / 0.2 for j in others]), 0)
        expected += (p_t * (p_t.log() - log_p_s)).sum() / 6
    assert torch.allclose(loss, expected, atol=1e-6) and torch.isclose(stats["kd_relation_kl"], expected.detach())
    loss.backward()
    assert student.grad.abs().sum() > 0
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]  # any rotation of the teacher's space: same loss
    assert torch.allclose(BatchRelationDistillation(0.1, 0.2)(student, teacher @ rotation)[0], loss, atol=1e-5)
    same, _ = BatchRelationDistillation(0.1, 0.1)(teacher.clone(), teacher)
    assert same.abs() < 1e-6
    with pytest.raises(ValueError):
        BatchRelationDistillation(0.0, 0.1)
