"""Fit a small diffusers AutoencoderKL on a folder of images: a VAE that works where no real one is available.

    python -m trainer.fit_vae IMAGE_DIR OUT_DIR [--steps 1500] [--batch 16] [--seed 0]

It keeps the SD1.5 latent layout the IMAGPose trainer and nodes assume (8x downscale, 4 latent channels,
latents multiplied by 0.18215), so a model trained with it has the pose guider, patch embedder and grid sizes
of the real setting. Choices, and why:
- no attention in the mid blocks: the VAE is purely convolutional, so a grid cell's latent depends only on its
  neighbourhood, as with the SD VAE at large sizes, and training on cell-sized crops is enough;
- trained on crops of 2x2 grids in which some cells are black, because the trainer also encodes the masked
  grid (target cells black);
- reconstruction loss L1 + MSE on a posterior sample and a small KL weight (the trainer encodes targets with a
  posterior sample, so the sample must decode well);
- afterwards the latent scale is folded into quant_conv / post_quant_conv so that latents x 0.18215 have unit
  standard deviation (what the SD noise schedule expects); decode(encode(x)) is unchanged by the fold.
Writes OUT_DIR (config.json + weights, `AutoencoderKL.from_pretrained` reads it) and OUT_DIR/fit.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imagpose.model import LATENT_SCALE

from .data import IMAGE_EXTENSIONS, load_rgb

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [32, 32, 64, 64], "sample_size": 64, "mid_block_add_attention": False,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
BLACK_CELL_PROB = 0.15
INITIAL_LOGVAR = -12.0  # posterior std ~0.002 at the start: the trainer encodes its targets with a sample
FIGURE_WEIGHT = 10.0  # loss weight of pixels that are neither white background nor a black cell


# ---- colour-preserving start ---------------------------------------------------------------------------
# Trained from a random start, this VAE learns grey shapes and no colour for thousands of steps: every path into
# the latent and out of the decoder passes a GroupNorm (conv_norm_out) that removes each channel group's per-image
# mean and scale, which is where a flat region's colour lives. So training starts from weights that already
# carry colour: the latent's first three channels are the 8x8 block means of R, G, B and the decoder upsamples
# them (nearest); all residual branches start at zero. Colour crosses each GroupNorm in a group [c, -c, L, -L]:
# its mean is 0 and its scale ~L whatever c is, so c comes out linear (error ~ c^2 / L^2), and a shift of
# +SHIFT keeps the SiLU after it in its linear range. The 4th latent channel and the spare feature channels
# start empty and are learned (shape and detail inside each 8x8 block).
COMPANION = 100.0
SHIFT = 20.0
COLOUR_GROUP = 4  # channels per colour: +c, -c, +L, -L
DETAIL = 3 * COLOUR_GROUP  # the 4th latent channel's pair (+z, -z) lives here; then two zero channels
FREE = DETAIL + 4  # channels from here on are ordinary features (random start)


def _centre(conv, out_channel: int, in_channel: int, value: float = 1.0) -> None:
    conv.weight[out_channel, in_channel, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = value


def _pass_through(conv, downsample: bool = False) -> None:
    """Every channel to itself: a 2x2 mean for a stride-2 downsampler, else the centre tap."""
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(min(conv.in_channels, conv.out_channels)):
        if downsample:
            conv.weight[c, c, :2, :2] = 0.25
        else:
            _centre(conv, c, c)


def _group_scale(norm, channel: int) -> float:
    """Expected standard deviation of the group holding `channel`, from its +-COMPANION channels."""
    size = norm.num_channels // norm.num_groups
    start = channel // size * size
    companions = sum(1 for c in range(start, start + size) if c < DETAIL and c % COLOUR_GROUP >= 2)
    return COMPANION * math.sqrt(companions / size)


def _linear_colour_norm(norm, shift: float = 0.0) -> None:
    """Give the +-colour channels their own scale back (and a shift) after the GroupNorm."""
    for c in range(DETAIL):
        if c % COLOUR_GROUP < 2:
            norm.weight[c] = _group_scale(norm, c)
            norm.bias[c] = shift


def _resnets(module):
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in module.modules() if isinstance(m, ResnetBlock2D)]


@torch.no_grad()
def colour_preserving_init(vae) -> list:
    """Weights for which decode(encode(x)) is the 8x8 block mean colour of x, upsampled (see the note above).

    Returns the pass-through convolutions (shortcuts, down- and upsamplers): they carry the +-COMPANION channels,
    so a small change in them would add large values to other channels; keep them fixed while fitting.
    """
    if vae.config.norm_num_groups * COLOUR_GROUP > vae.config.block_out_channels[0] or vae.config.latent_channels != 4:
        raise ValueError("the colour-preserving start needs 4 latent channels and groups of >= 4 channels")
    encoder, decoder = vae.encoder, vae.decoder
    fixed = []
    for resnet in _resnets(encoder) + _resnets(decoder):
        resnet.conv2.weight.zero_()  # every residual branch starts silent: the block is the identity
        resnet.conv2.bias.zero_()
        _linear_colour_norm(resnet.norm1)  # the branch sees colour at its own scale
        if resnet.conv_shortcut is not None:
            _pass_through(resnet.conv_shortcut)
            fixed.append(resnet.conv_shortcut)
    for block in encoder.down_blocks:
        for downsampler in block.downsamplers or []:
            _pass_through(downsampler.conv, downsample=True)
            fixed.append(downsampler.conv)
    for block in decoder.up_blocks:
        for upsampler in block.upsamplers or []:
            _pass_through(upsampler.conv)
            fixed.append(upsampler.conv)

    def colour_inputs(conv, sources) -> None:
        """conv_in rows: +-each source channel (centre tap), +-COMPANION constants, empty detail channels."""
        conv.weight[:FREE].zero_()
        conv.bias[:FREE].zero_()
        for colour, source in enumerate(sources):
            base = colour * COLOUR_GROUP
            _centre(conv, base, source, 1.0)
            _centre(conv, base + 1, source, -1.0)
            conv.bias[base + 2], conv.bias[base + 3] = COMPANION, -COMPANION

    colour_inputs(encoder.conv_in, (0, 1, 2))
    colour_inputs(decoder.conv_in, (0, 1, 2))
    _centre(decoder.conv_in, DETAIL, 3, 1.0)  # the learned 4th latent channel, as a +- pair
    _centre(decoder.conv_in, DETAIL + 1, 3, -1.0)
    for norm in (encoder.conv_norm_out, decoder.conv_norm_out):
        _linear_colour_norm(norm, SHIFT)
    latent = vae.config.latent_channels
    encoder.conv_out.weight.zero_()
    encoder.conv_out.bias.zero_()
    decoder.conv_out.weight.zero_()
    decoder.conv_out.bias.zero_()
    for colour in range(3):
        _centre(encoder.conv_out, colour, colour * COLOUR_GROUP)
        encoder.conv_out.bias[colour] = -SHIFT
        _centre(decoder.conv_out, colour, colour * COLOUR_GROUP)
        decoder.conv_out.bias[colour] = -SHIFT
    encoder.conv_out.bias[latent:] = INITIAL_LOGVAR  # a near-deterministic posterior
    for conv in (vae.quant_conv, vae.post_quant_conv):
        _pass_through(conv)
    return fixed


def load_images(folder: str | Path, limit: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1]; all images must have one size."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    if not paths:
        raise ValueError(f"no images under {folder}")
    images = [load_rgb(p) for p in paths]
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) != 1:
        raise ValueError(f"images under {folder} have several sizes {sorted(sizes)[:3]}; give one size")
    return torch.stack(images)


def random_crops(images: torch.Tensor, batch: int, generator: torch.Generator, crop: int | None = None) -> torch.Tensor:
    """Crops (cell-sized by default) at random offsets of random 2x2 grids whose cells are images or black."""
    from imagpose.grid import CELLS, pack_grid

    n, _, height, width = images.shape
    h, w = (height, width) if crop is None else (crop, crop)
    picks = torch.randint(0, n, (batch, CELLS), generator=generator)
    black = torch.rand(batch, CELLS, generator=generator) < BLACK_CELL_PROB
    cells = images[picks] * (~black).view(batch, CELLS, 1, 1, 1)
    grids = pack_grid(list(cells.unbind(1)))
    top = torch.randint(0, 2 * height - h + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * width - w + 1, (batch,), generator=generator)
    return torch.stack([g[:, t : t + h, l : l + w] for g, t, l in zip(grids, top.tolist(), left.tolist())])


def fold_latent_scale(vae, scale: float) -> None:
    """Multiply the latent by `scale` inside the VAE (encoder side) and divide it back (decoder side)."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:channels] *= scale
        vae.quant_conv.bias[:channels] *= scale
        vae.quant_conv.bias[channels:] += 2 * math.log(scale)  # log-variance of the scaled latent
        vae.post_quant_conv.weight /= scale  # (out, in, 1, 1): every input channel was scaled


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, generator: torch.Generator, batch: int = 64) -> float:
    """Standard deviation of posterior means x 0.18215 over random grid crops."""
    crops = random_crops(images, batch, generator)
    return float((vae.encode(crops * 2 - 1).latent_dist.mean * LATENT_SCALE).std())


def pixel_weights(x: torch.Tensor) -> torch.Tensor:
    """FIGURE_WEIGHT where a pixel is neither white background nor black, else 1: the figures' colours are a small
    part of each image, and without this the VAE learns shapes in grey long before it learns their colours."""
    background = (x > 0.96).all(dim=1, keepdim=True) | (x < 0.04).all(dim=1, keepdim=True)
    return torch.where(background, 1.0, FIGURE_WEIGHT)


def fit(images: torch.Tensor, steps: int, batch: int = 16, learning_rate: float = 2e-3, kl_weight: float = 1e-6,
        seed: int = 0, log_every: int = 100, crop: int | None = None):
    """Train from scratch; returns (vae with the latent scale folded in, report)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    for module in colour_preserving_init(vae):
        module.requires_grad_(False)
    vae.train()
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    started, losses = time.time(), []
    for step in range(1, steps + 1):
        pixels = random_crops(images, batch, generator, crop)
        x, weights = pixels * 2 - 1, pixel_weights(pixels)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=generator)).sample
        error = (rec - x).abs()
        loss = (weights * (error + error**2)).mean() / weights.mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == 1):
            print(f"vae step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - started:.0f} s)",
                  flush=True)
    vae.requires_grad_(False).eval()
    std = latent_std(vae, images, generator)
    fold_latent_scale(vae, 1.0 / std)
    report = {"steps": steps, "batch": batch, "seconds": round(time.time() - started, 1),
              "final_loss": float(np.mean(losses[-50:])), "latent_std_before_fold": std,
              "latent_std": latent_std(vae, images, generator)}
    return vae, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.fit_vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--crop", type=int, default=None, help="train on crops of this side (default: the image size)")
    parser.add_argument("--max-images", type=int, default=4000, help="images held in memory for training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        images = load_images(args.image_dir, args.max_images)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if images.shape[-1] % 8 or images.shape[-2] % 8:
        print(f"error: image size {tuple(images.shape[-2:])} is not a multiple of 8", file=sys.stderr)
        return 2
    vae, report = fit(images, args.steps, args.batch, args.lr, seed=args.seed, crop=args.crop)
    vae.save_pretrained(args.out_dir, safe_serialization=True)
    (args.out_dir / "fit.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
