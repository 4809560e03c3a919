"""Two CPU processes with the gloo backend: the gathered losses behave like one big batch.

(a) InfoNCE + entropy (method.md §1.2) on each rank's half of a batch equals the single-process
    loss on the whole batch, and ``gather_with_grad`` carries the gradients across ranks.

    Derivation. Let the global batch be E = [E_0; E_1] (rank r holds n rows E_r) and let
    ℓ_i be row i's loss term. Single process: L = (1/2n) Σ_i ℓ_i. On rank r, L_r = (1/n) Σ_{i∈r} ℓ_i,
    so (L_0 + L_1)/2 = L. Each ℓ_i depends on every row of E (its row of S = E_r E_globᵀ);
    rank r's backward of L_r reaches E_r through the local factor directly and through the
    gathered factor, whose backward all-reduce-SUMs the gradient over ranks. Hence the gradient
    that lands on E_r on rank r is ∂L_r/∂E_r + ∂L_{1-r}/∂E_r = ∂(L_0 + L_1)/∂E_r = 2 ∂L/∂E_r.
    DDP then averages parameter gradients over the 2 ranks, giving exactly ∂L/∂θ. So the test
    checks cat(grad_0, grad_1) == 2 · grad_single (world size × the single-process gradient).

(b) Similarity distillation with a MemoryBank on each rank enqueues the teacher keys of both
    ranks, in rank order, and the banks stay identical across ranks.

(c) MoCo (method.md §3.3) scores each rank's queries against its own keys and the shared queue,
    then enqueues the keys of both ranks, in rank order: the queues stay identical.

Children write their results with ``torch.save`` into tmp_path; the parent asserts.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)

WORLD = 2
N_IMAGES = 4  # per rank; n = 8 views per rank
DIM = 6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(2·2B, d) unit rows and ids: rank r's block = [v0 of its B images; v1 of its B images]."""
    g = torch.Generator().manual_seed(123)
    blocks, ids = [], []
    for r in range(WORLD):
        images = torch.arange(r * N_IMAGES, (r + 1) * N_IMAGES)
        anchor = torch.randn(N_IMAGES, DIM, generator=g, dtype=torch.float64)
        v0 = anchor + 0.3 * torch.randn(N_IMAGES, DIM, generator=g, dtype=torch.float64)
        v1 = anchor + 0.3 * torch.randn(N_IMAGES, DIM, generator=g, dtype=torch.float64)
        blocks.append(F.normalize(torch.cat([v0, v1]), dim=1))
        ids.append(torch.cat([images, images]))
    return torch.cat(blocks), torch.cat(ids)


def _teacher_keys() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return 2.0 * torch.randn(WORLD * 2 * N_IMAGES, DIM, generator=g)


def _moco_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """(W·B, d) unit queries (view0) and keys (view1); rank r holds rows [r·B, (r+1)·B)."""
    g = torch.Generator().manual_seed(11)
    q = F.normalize(torch.randn(WORLD * N_IMAGES, DIM, generator=g), dim=1)
    k = F.normalize(q + 0.5 * torch.randn(WORLD * N_IMAGES, DIM, generator=g), dim=1)
    return q, k


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        from copydistill.losses.contrastive import InfoNCEEntropy, match_matrix
        from copydistill.losses.distill import MemoryBank, SimilarityDistillation
        from copydistill.losses.distributed import gather, gather_with_grad, world
        from copydistill.losses.moco import MoCoHardNegative

        assert world() == (rank, WORLD)
        n = 2 * N_IMAGES
        everything, all_ids = _global_batch()
        local = everything[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        ids = all_ids[rank * n : (rank + 1) * n]
        match = match_matrix(ids)
        loss, stats = InfoNCEEntropy(temperature=0.1, entropy_weight=3.0)(local, match)
        (grad,) = torch.autograd.grad(loss, local)

        # plain gathers: rank order, and gather_with_grad's backward sums over ranks
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(x)
        (gathered * torch.arange(1, 5, dtype=torch.float32)[:, None] * (rank + 1)).sum().backward()

        # (b) distillation with a bank on each rank
        keys = _teacher_keys()
        bank = MemoryBank(dim=DIM, size=20, seed=0)
        distill = SimilarityDistillation(bank, 0.05, 0.05)
        student = F.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(rank)), dim=1)
        kd_loss, _ = distill(student, keys[rank * n : (rank + 1) * n])

        # (c) MoCo: a queue of 11 (not a multiple of the 2 x 4 gathered keys) on each rank
        queue = MemoryBank(dim=DIM, size=11, seed=1)
        queries, moco_keys = _moco_rows()
        rows = slice(rank * N_IMAGES, (rank + 1) * N_IMAGES)
        moco_loss, _ = MoCoHardNegative(queue, 0.07, 5.0)(queries[rows], moco_keys[rows])
        torch.save({
            "loss": loss.detach(), "stats": {k: v.detach() for k, v in stats.items()},
            "grad": grad.detach(), "match": match, "gathered_ids": gather(ids),
            "gathered_x": gathered.detach(), "x_grad": x.grad.detach(),
            "kd_loss": kd_loss.detach(), "student": student,
            "queue": bank.queue.clone(), "ordered": bank.ordered().clone(),
            "pointer": int(bank.pointer), "filled": int(bank.filled),
            "moco_loss": moco_loss, "moco_queue": queue.queue.clone(),
            "moco_pointer": int(queue.pointer),
        }, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, str(out))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=50)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    files = [out / f"rank{r}.pt" for r in range(WORLD)]
    if not all(f.is_file() for f in files):
        pytest.fail(f"distributed workers failed (exit codes {codes})")
    return [torch.load(f, weights_only=False) for f in files]


def test_gather_is_rank_ordered_and_backward_sums_over_ranks(results):
    for r, res in enumerate(results):
        expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
        assert torch.equal(res["gathered_x"], expected)
        # rank k's loss weights gathered row j by (j+1)·(k+1); our rows get Σ_k over ranks
        rows = torch.arange(r * 2, r * 2 + 2, dtype=torch.float32) + 1
        assert torch.allclose(res["x_grad"], (rows * (1 + 2))[:, None].expand(2, 3))


def test_match_matrix_on_gathered_ids(results):
    everything, all_ids = _global_batch()
    n = 2 * N_IMAGES
    full = all_ids[:, None] == all_ids[None, :]
    for r, res in enumerate(results):
        assert torch.equal(res["gathered_ids"], all_ids)
        assert torch.equal(res["match"], full[r * n : (r + 1) * n])


def test_infonce_loss_across_ranks_equals_single_process(results):
    from copydistill.losses.contrastive import InfoNCEEntropy, match_matrix

    everything, all_ids = _global_batch()
    single = everything.clone().requires_grad_(True)
    loss, stats = InfoNCEEntropy(temperature=0.1, entropy_weight=3.0)(single, match_matrix(all_ids))
    (grad,) = torch.autograd.grad(loss, single)
    mean_loss = sum(res["loss"] for res in results) / WORLD
    assert float(mean_loss) == pytest.approx(float(loss.detach()), rel=1e-10)
    for key in ("nce", "entropy", "nearest_negative_sim"):  # row means: average over ranks
        assert float(sum(res["stats"][key] for res in results) / WORLD) == pytest.approx(
            float(stats[key]), rel=1e-10), key
    # the derivation in the module docstring: rank grads = world size × single-process grad
    distributed_grad = torch.cat([res["grad"] for res in results])
    assert torch.allclose(distributed_grad, WORLD * grad, atol=1e-10, rtol=1e-8)
    # and the cross-rank part is really there: rank 0's gradient alone (no gather) would differ
    local = everything[: 2 * N_IMAGES].clone().requires_grad_(True)
    local_loss, _ = InfoNCEEntropy(temperature=0.1, entropy_weight=3.0)(
        local, all_ids[: 2 * N_IMAGES, None] == all_ids[None, : 2 * N_IMAGES])
    (local_grad,) = torch.autograd.grad(local_loss, local)
    assert not torch.allclose(local_grad, results[0]["grad"], atol=1e-6)


def test_distillation_bank_enqueues_both_ranks_keys_in_rank_order(results):
    n = 2 * N_IMAGES
    keys = F.normalize(_teacher_keys(), dim=1)
    for res in results:
        assert res["pointer"] == 2 * n and res["filled"] == 2 * n
        assert torch.allclose(res["ordered"][-2 * n :], keys, atol=1e-6)
        assert torch.allclose(res["queue"][: 2 * n], keys, atol=1e-6)  # rank 0's first, then rank 1's
    assert torch.equal(results[0]["queue"], results[1]["queue"])


def test_distillation_loss_uses_global_keys(results):
    from copydistill.losses.distill import MemoryBank

    n = 2 * N_IMAGES
    keys = F.normalize(_teacher_keys(), dim=1)
    queue = MemoryBank(dim=DIM, size=20, seed=0).queue
    bank = torch.cat([keys, queue])
    for r, res in enumerate(results):
        t = keys[r * n : (r + 1) * n]
        p_t = F.softmax(t @ bank.T / 0.05, dim=1)
        log_p_s = F.log_softmax(res["student"] @ bank.T / 0.05, dim=1)
        expected = -(p_t * log_p_s).sum(1).mean()
        assert float(res["kd_loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_moco_queue_enqueues_keys_of_both_ranks_in_rank_order(results):
    from copydistill.losses.distill import MemoryBank
    from copydistill.losses.moco import MoCoHardNegative

    queries, keys = _moco_rows()
    for r, res in enumerate(results):
        assert res["moco_pointer"] == WORLD * N_IMAGES
        assert torch.allclose(res["moco_queue"][: WORLD * N_IMAGES], keys, atol=1e-6)  # rank 0's, then rank 1's
        rows = slice(r * N_IMAGES, (r + 1) * N_IMAGES)  # each rank: its own rows against the initial queue
        expected, _ = MoCoHardNegative(MemoryBank(DIM, 11, seed=1), 0.07, 5.0)(queries[rows], keys[rows])
        assert float(res["moco_loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(results[0]["moco_queue"], results[1]["moco_queue"])
