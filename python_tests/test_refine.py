"""model.mask_refine: the final mask upsampled to the input's size by joint bilateral upsampling."""

import math

import pytest
import torch

from ssrvg_ext.config import load_config, merge
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.models.refine import bilateral_upsample

from test_model import TINY, batch_for


def loop_reference(logits, images, sc, ss):
    """Kopf et al.'s joint bilateral upsampling written pixel by pixel (float64)."""
    b, h, w = logits.shape
    H, W = images.shape[-2:]
    s = H // h
    guide = images.reshape(b, -1, h, s, w, s).mean((3, 5))
    out = torch.zeros(b, H, W, dtype=torch.float64)
    for n in range(b):
        for y in range(H):
            for x in range(W):
                i, j = y // s, x // s
                py, px = (y + 0.5) / s - 0.5, (x + 0.5) / s - 0.5  # the pixel's centre in cell units
                num = den = 0.0
                for ci in range(max(i - 1, 0), min(i + 2, h)):
                    for cj in range(max(j - 1, 0), min(j + 2, w)):
                        col = float(((images[n, :, y, x] - guide[n, :, ci, cj]) ** 2).sum())
                        wt = math.exp(-col / (2 * sc * sc) - ((ci - py) ** 2 + (cj - px) ** 2) / (2 * ss * ss))
                        num += wt * float(logits[n, ci, cj])
                        den += wt
                out[n, y, x] = num / den
    return out


@pytest.mark.parametrize("s,h,w", [(2, 5, 4), (4, 3, 3), (1, 3, 5), (3, 1, 2)])
def test_equals_the_pixel_loop(s, h, w):
    g = torch.Generator().manual_seed(s * 10 + h)
    logits = torch.randn(2, h, w, generator=g, dtype=torch.float64) * 3
    images = torch.randn(2, 3, h * s, w * s, generator=g, dtype=torch.float64)
    got = bilateral_upsample(logits, images, 0.7, 1.3)
    torch.testing.assert_close(got, loop_reference(logits, images, 0.7, 1.3), rtol=1e-10, atol=1e-10)


def test_constant_logits_stay_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 8, 12, generator=g, dtype=torch.float64)
    const = torch.full((1, 4, 6), -2.5, dtype=torch.float64)
    torch.testing.assert_close(bilateral_upsample(const, images, 0.3, 1.0), torch.full((1, 8, 12), -2.5,
                                                                                      dtype=torch.float64))
    logits = torch.randn(1, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: bilateral_upsample(t, images, 0.5, 1.5), (logits,))


def test_the_outline_follows_the_colour_edge():
    """An object whose edge falls inside a mask cell: bilinear upsampling of the cell means puts the
    outline anywhere in that cell; guided by the image, the mask's outline is the colour edge."""
    H = W = 32
    images = torch.zeros(1, 3, H, W, dtype=torch.float64)
    truth = torch.zeros(H, W, dtype=torch.bool)
    truth[9:23, 7:26] = True                       # edges at 9, 23, 7, 26: none on the stride-4 grid
    images[0, :, truth] = 2.0
    low = truth.double().reshape(8, 4, 8, 4).mean((1, 3)) * 8 - 4      # logits of the cells' object shares
    bilinear = torch.nn.functional.interpolate(low[None, None], size=(H, W), mode="bilinear",
                                               align_corners=False)[0, 0] > 0
    guided = bilateral_upsample(low[None], images, 0.5, 1.5)[0] > 0
    assert (bilinear != truth).sum() >= 10
    assert torch.equal(guided, truth)


def test_bad_sizes_and_sigmas_are_refused():
    with pytest.raises(ValueError, match="integer multiple"):
        bilateral_upsample(torch.zeros(1, 3, 3), torch.zeros(1, 3, 10, 9), 1.0, 1.0)
    with pytest.raises(ValueError, match="same B"):
        bilateral_upsample(torch.zeros(2, 3, 3), torch.zeros(1, 3, 6, 6), 1.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        bilateral_upsample(torch.zeros(1, 3, 3), torch.zeros(1, 3, 6, 6), 0.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        build_model(load_config(TINY, ["model.mask_refine.enabled=true", "model.mask_refine.sigma_space=-1"]),
                    vocab_size=40)


@pytest.mark.parametrize("in_training", [False, True])
def test_model_refines_the_final_mask(in_training):
    """Inference: the final mask at the input's size, equal to bilateral_upsample of the unrefined
    model's logits (the refiner has no parameters: the same weights either way); training: refined only
    with training=true, and the loss's gradient reaches every parameter."""
    base = load_config(TINY, ["model.mask_refine.enabled=false"])
    cfg = merge(base, {"model": {"mask_refine": {"enabled": True, "sigma_color": 0.5, "sigma_space": 1.5,
                                                 "training": in_training}}})
    torch.manual_seed(0)
    plain = build_model(base, vocab_size=40).eval()
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40).eval()
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in model.named_parameters()]
    batch = batch_for(cfg)
    args = (batch["images"], batch["text_ids"], batch["text_mask"])
    s = cfg["data"]["input_size"]
    with torch.no_grad():
        low, refined = plain(*args)["mask_logits"], model(*args)["mask_logits"]
    assert low.shape[-1] == s // cfg["model"]["mask_stride"] and refined.shape == (4, s, s)
    torch.testing.assert_close(refined, bilateral_upsample(low, batch["images"], 0.5, 1.5))
    model.train()
    out = model(*args)
    assert out["mask_logits"].shape[-1] == (s if in_training else low.shape[-1])
    build_criterion(cfg)(out, batch)["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
