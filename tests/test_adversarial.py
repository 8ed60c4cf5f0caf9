import torch
import torch.nn.functional as F

from nba_scale.adversarial import pgd_untargeted
from nba_scale.models import WideResNet


def test_pgd_stays_within_eps_and_raises_the_loss():
    torch.manual_seed(0)
    m = WideResNet(10, 1).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    eps = 8 / 255
    xa = pgd_untargeted(m, x, y, eps, steps=5, step_size=eps / 4)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert F.cross_entropy(m(xa), y) > F.cross_entropy(m(x), y)
    assert all(p.grad is None for p in m.parameters())  # crafting leaves the weights' grads alone
    assert torch.equal(pgd_untargeted(m, x, y, 0.0, 3, 0.0, random_start=True), x)


def test_pgd_in_bf16_stays_within_eps_and_mostly_steps_where_fp32_does():
    torch.manual_seed(0)
    m = WideResNet(10, 1).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    eps = 8 / 255
    full = pgd_untargeted(m, x, y, eps, steps=1, step_size=eps, random_start=False)
    half = pgd_untargeted(m, x, y, eps, steps=1, step_size=eps, random_start=False, bf16=True)
    assert half.dtype == torch.float32 and (half - x).abs().max() <= eps + 1e-6
    assert not torch.equal(half, full)  # the passes did run in bf16
    # One step of eps is the gradient's sign: bf16 flips it only where the gradient is near zero.
    inside = (x > eps) & (x < 1 - eps)
    agree = (torch.sign(half - x) == torch.sign(full - x))[inside].float().mean().item()
    assert agree > 0.9, agree
    assert F.cross_entropy(m(half), y) > F.cross_entropy(m(x), y)


def test_pgd_in_chunks_matches_one_pass_and_restores_the_mode():
    torch.manual_seed(0)
    m = WideResNet(10, 1).train()
    x, y = torch.rand(10, 3, 32, 32), torch.randint(0, 10, (10,))
    whole = pgd_untargeted(m, x, y, 8 / 255, 3, 2 / 255, random_start=False)
    assert m.training  # crafted in eval mode, handed back in train mode
    chunked = pgd_untargeted(m, x, y, 8 / 255, 3, 2 / 255, random_start=False, batch_size=4)
    # Eval mode: each image's δ depends on that image only, so chunking changes nothing but rounding.
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert not torch.equal(whole, x)
