import math
import os

import pytest
import torch
import torch.nn.functional as F

from mmdialog.objectives.contrastive import (MAX_TEMPERATURE, MIN_TEMPERATURE, LogitScale, gather_rows,
                                             global_share, info_nce)


def unit(x):
    return F.normalize(x, dim=-1)


def hand_info_nce(media, text, scale, same=None):
    """The symmetric InfoNCE written out with Python floats, one softmax at a time."""
    n = len(media)
    sims = [[scale * float(media[i] @ text[j]) for j in range(n)] for i in range(n)]

    def ce(rows):
        total = 0.0
        for i, row in enumerate(rows):
            keep = [v for j, v in enumerate(row) if j == i or same is None or not same[i][j]]
            total += -row[i] + math.log(sum(math.exp(v) for v in keep))
        return total / n

    return (ce(sims) + ce([list(col) for col in zip(*sims)])) / 2


def test_info_nce_equals_the_hand_computation():
    g = torch.Generator().manual_seed(0)
    media, text = unit(torch.randn(5, 8, generator=g)), unit(torch.randn(5, 8, generator=g))
    assert info_nce(media, text, 7.0).item() == pytest.approx(hand_info_nce(media, text, 7.0), rel=1e-5)


def test_matching_captions_are_not_negatives():
    g = torch.Generator().manual_seed(1)
    media, text = unit(torch.randn(4, 8, generator=g)), unit(torch.randn(4, 8, generator=g))
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True  # pairs 0 and 2 have the same caption
    got = info_nce(media, text, 5.0, same).item()
    assert got == pytest.approx(hand_info_nce(media, text, 5.0, same.tolist()), rel=1e-5)
    assert got < info_nce(media, text, 5.0).item()  # fewer negatives, lower loss


def test_aligned_pairs_score_lower_than_shuffled_ones():
    x = unit(torch.randn(6, 16, generator=torch.Generator().manual_seed(2)))
    assert info_nce(x, x, 10.0) < info_nce(x, x[torch.randperm(6, generator=torch.Generator().manual_seed(3))], 10.0)


def test_the_temperature_learns_and_stays_in_bounds():
    """With pairs already aligned, a sharper softmax lowers the loss: the learned temperature must fall."""
    x = unit(torch.randn(8, 16, generator=torch.Generator().manual_seed(4)))
    scale = LogitScale(0.5)
    opt = torch.optim.SGD(scale.parameters(), lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        info_nce(x, x, scale()).backward()
        opt.step()
    assert scale.temperature < 0.2
    with torch.no_grad():  # far past the bound: clamped there, and no gradient pushes it further
        scale.log_scale.fill_(20.0)
    assert scale.temperature == pytest.approx(MIN_TEMPERATURE)
    scale.log_scale.grad = None
    info_nce(x, x, scale()).backward()
    assert scale.log_scale.grad.item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        LogitScale(MAX_TEMPERATURE * 2)


def test_global_share_keeps_the_value_local_and_the_gradient_global():
    w = torch.tensor(2.0, requires_grad=True)
    loss = w ** 2
    part = global_share(loss, n_local=3, n_global=8)
    assert part.item() == pytest.approx(3 * 4.0)
    part.backward()
    assert w.grad.item() == pytest.approx(8 * 4.0)


def test_without_a_process_group_gather_is_the_identity():
    x = torch.randn(3, 4)
    rows, offset = gather_rows(x)
    assert rows is x and offset == 0


def _rank(rank: int, world: int, init: str, inputs, weight, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        proj = torch.nn.Linear(inputs.shape[1], 4, bias=False)
        with torch.no_grad():
            proj.weight.copy_(weight)
        sizes = [3, 2]  # processes may hold different numbers of pairs
        start = sum(sizes[:rank])
        local = inputs[start:start + sizes[rank]]
        media, text = unit(proj(local)), unit(proj(local.flip(1)))
        all_media, offset = gather_rows(media)
        all_text, _ = gather_rows(text)
        loss = info_nce(all_media, all_text, 3.0)
        n_global = len(all_media)
        # what the trainer does: backward of part / (global weight / world size), then DDP averages gradients
        (global_share(loss, len(local), n_global) / (n_global / world)).backward()
        grad = proj.weight.grad.clone()
        dist.all_reduce(grad)
        q.put((rank, offset, float(loss), (grad / world).tolist()))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_has_the_single_process_gradient(tmp_path):
    """Two processes (gloo) holding 3 and 2 pairs: the loss over the gathered batch, with gradients reaching
    each process's own rows only, gives after DDP's averaging exactly the gradient of one process holding all 5."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(5)
    inputs, weight = torch.randn(5, 6, generator=g), torch.randn(4, 6, generator=g)
    proj = torch.nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        proj.weight.copy_(weight)
    ref = info_nce(unit(proj(inputs)), unit(proj(inputs.flip(1))), 3.0)
    ref.backward()

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    procs = [ctx.Process(target=_rank, args=(r, 2, init, inputs, weight, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [r[1] for r in results] == [0, 3]  # each process's offset in the gathered batch
    for _, _, loss, grad in results:
        assert loss == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(torch.tensor(grad), proj.weight.grad, rtol=1e-4, atol=1e-6)
