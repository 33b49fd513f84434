import pytest
import torch

from mmdialog.train.muon import Muon, adjusted_lr, orthogonalise

COEF = (3.4445, -4.7750, 2.0315)


def test_the_iteration_in_bf16_is_torchs_own():
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orthogonalise(g, COEF, 5, 1e-7, torch.bfloat16), _zeropower_via_newtonschulz(g, COEF, 5, 1e-7))


def test_the_iteration_in_fp32_orthogonalises():
    g = torch.randn(64, 24, generator=torch.Generator().manual_seed(1))
    x = orthogonalise(g, COEF, 5, 1e-7, torch.float32)
    assert x.dtype == torch.float32 and x.shape == g.shape
    s = torch.linalg.svdvals(x)
    assert 0.5 < s.min() and s.max() < 1.5  # U S' V^T with S' near 1 (the quintic does not converge to exactly 1)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(x.flatten(), (u @ vh).flatten(), dim=0) > 0.95


@pytest.mark.parametrize("shape", [(32, 8), (8, 32)])
def test_fp32_steps_follow_torchs_muon_and_share_its_state(shape):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(*shape))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Muon([a], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)
    ref = torch.optim.Muon([b], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = a.detach().clone()
    for _ in range(3):
        grad = torch.randn(*shape)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    moved_ours, moved_ref = a.detach() - start, b.detach() - start
    assert not torch.equal(moved_ours, moved_ref)  # the iteration really ran in another dtype
    assert (moved_ours - moved_ref).norm() < 0.05 * moved_ref.norm()  # bf16 rounding apart, the same steps
    assert torch.allclose(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])
    ref.load_state_dict(ours.state_dict())  # a checkpoint of either loads into the other


def test_bf16_is_torchs_step_exactly():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(16, 8))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = Muon([a], lr=0.01, ns_dtype=torch.bfloat16), torch.optim.Muon([b], lr=0.01)
    a.grad = b.grad = torch.randn(16, 8)
    ours.step()
    ref.step()
    assert torch.equal(a, b)


def test_adjusted_lr_is_torchs():
    from torch.optim._muon import _adjust_lr

    for how in (None, "original", "match_rms_adamw"):
        for shape in (torch.Size([128, 352]), torch.Size([352, 128])):
            assert adjusted_lr(0.01, how, shape) == pytest.approx(_adjust_lr(0.01, how, shape))
