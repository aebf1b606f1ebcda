#!/usr/bin/env python3
"""Train the demo Stable Diffusion (and its FID feature network) on tools/demo_world.py.

A small SD 1.x in the layout users bring: CLIPTextModel on the real CLIP BPE vocabulary
(models/tiny/tokenizer), UNet2DConditionModel with CrossAttnDownBlock2D/CrossAttnUpBlock2D,
AutoencoderKL downsampling by 8 to 4 latent channels, epsilon prediction, scaled-linear
betas, SD 1.5's PNDM scheduler config. 256x256 images: 32x32 latents, so the UNet's
full-resolution level holds 1024 tokens. PyTorch on the CPU (bfloat16 autocast where the
CPU has AMX), fixed seeds, a fixed number of steps per stage.

Stages (each resumes from its last checkpoint in tools/.work/demo/ when killed):
  data      render the training scenes (seed 1) into tools/.work/demo/images.npy
  latents   each scene's layout latent, drawn from its geometry (layout_latent): channels
            0-2 its colours at 1/8 size with every object drawn as the disc inscribed in
            its box, channel 3 its shape tag over that disc (circle 0, square -1,
            triangle +1); sets the VAE's scaling_factor. What the UNet learns to make
  vae       AutoencoderKL: the encoder learns to give the layout latents, the decoder to
            draw the scenes from them, degraded as the UNet's are (noise, blur, a weak or
            strong tag), with L1 + MSE weighted 10x on object pixels; logs how many held-out
            probe scenes keep their colour and shape when drawn from their layout latents
            and through encode + decode
  decoder   the decoder alone, on degraded layout latents of 16x16-latent windows that
            hold a whole object (it reads the shape from the tag over the whole disc) and
            of random crops, the last 100 steps whole images (the encoder, and so what the
            UNet learns to make, stays fixed)
  text      the CLIP text encoder alone, taught to name what a caption says (objects in
            order with colour, shape and size, background, place, relation, count) from
            its pooled state; frozen from here on, as SD's CLIP is. Trained jointly with
            the UNet instead, it collapsed to one output for every caption and the UNet
            learnt to ignore the text (tools/demo/train.log, first run)
  unet      the UNet on the frozen encoder's states: 1400 steps on 16x16-latent windows
            (128 px) around the objects of one-object scenes, at their 256 px size and
            with their captions less the place (a fifth of the cost per scene), then 600
            on whole scenes at 256 px; a third of
            each batch at t < 300 (the low-noise steps that draw edges); 10% empty
            captions (classifier-free
            guidance), cross-attention outputs zero-initialised, each timestep's loss
            weighted by 1/SNR clamped to [1, 10], offset noise (backgrounds are flat white, gray or black: a
            whole-image brightness that plain noise cannot teach under SD's non-zero
            terminal SNR)
  features  the FID feature network: pytorch-fid's four outputs (64/192/768/2048),
            trained to name the colours, shapes, count and background of a scene
  save      the diffusers pipeline -> tools/demo/diffusers/, the feature network ->
            models/demo_fid/features.onnx

Usage (from the repository root; under 2 hours on 2 cores: on an AMD VM without AMX the
thirteenth run's vae stage took 17 minutes, latents 10 s, the decoder stage 27, the unet
stage 47 (1400 window steps at 0.95 s, 600 whole-scene steps at 2.45 s, with its probes),
features 3, the whole run 95 minutes with the data and text stages' checkpoints kept
from earlier runs (data takes about 1 minute, text about 3: about 100 minutes from
nothing; tools/demo/train.log)):
  nice tools/.venv/bin/python tools/train_demo.py 2>&1 | tee -a tools/demo/train.log
  tools/.venv/bin/python tools/train_demo.py --bench    # seconds per step of each stage,
                                                        # and the UNet stage's minutes here
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_world  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "tools" / ".work" / "demo"
PIPELINE_DIR = ROOT / "tools" / "demo" / "diffusers"
FEATURES_ONNX = ROOT / "models" / "demo_fid" / "features.onnx"
TOKENIZER_DIR = ROOT / "models" / "tiny" / "tokenizer"

TRAIN_SEED = 1  # world seed of the training scenes; 2 is held out (tools/demo_judge.py)
SCENES = 12000
THREADS = 2
WINDOW = 16  # latents (128 px) on a side of the UNet's first steps' windows

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=256,
)
UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    # Transformers at the full-resolution level (1024 tokens) and in the mid block: the
    # level ToMe merges (max_downsample = 1) holds the UNet's attention, as SD 1.5's
    # 4096-token level holds most of its attention time.
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,  # diffusers' name for the number of heads: 8, as SD 1.5
    norm_num_groups=16,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
# Stable Diffusion 1.5's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
    clip_sample=False,
)

STAGES = {
    # name: steps, batch, learning rate, checkpoint every
    "vae": dict(steps=1600, batch=8, lr=1e-3, every=200),
    # batch object windows and crop_batch random crops per step; two cosine cycles, the
    # second a warm restart at half the rate (train_decoder)
    "decoder": dict(steps=3000, batch=8, crop_batch=4, lr=1e-3, every=200, cycles=((2000, 1.0), (1000, 0.5))),
    "text": dict(steps=600, batch=256, lr=1e-3, every=200),
    # window_steps of window_batch object windows first (train_unet), then batch at 256 px
    "unet": dict(steps=2000, batch=32, lr=6e-4, every=200, window_steps=1400, window_batch=64),
    "features": dict(steps=800, batch=32, lr=1e-3, every=200),
}
VAE_FULL_STEPS = 200
DECODER_FULL_STEPS = 100
ROUND_TRIP_EVERY = 400  # steps between the VAE stages' probe logs (about 40 s each)
BENCH_STEPS = 3  # window steps, then whole-scene steps, that --bench times of the UNet stage
CAPTION_DROP = 0.1
MAX_LOSS_WEIGHT = 10.0  # of a timestep's loss, 1/SNR clamped to [1, this] (train_unet)
LOW_NOISE_SHARE = 1 / 3  # of each batch drawn at t < LOW_NOISE_T (train_unet)
LOW_NOISE_T = 300
OFFSET_NOISE = 0.1  # std of the per-image, per-channel constant added to the training noise
EMA_MAX = 0.998
DECODER_NOISE = 0.3  # largest std of the noise on the decoder's training latents (degrade)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def autocast():
    # bfloat16 matmuls/convolutions on AMX; master weights and the loss stay float32.
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=USE_BF16)


USE_BF16 = True


def step_generator(stage: str, step: int) -> torch.Generator:
    """Each step's randomness from (stage, step) alone: a resumed run draws the same."""
    g = torch.Generator()
    g.manual_seed(hash_seed(stage) * 1_000_003 + step)
    return g


def hash_seed(stage: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(stage))


def lr_at(step: int, cfg: dict) -> float:
    warm = 100
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    progress = (step - warm) / max(1, cfg["steps"] - warm)
    return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- data


def load_images() -> np.ndarray:
    path = WORK / "images.npy"
    if not path.exists():
        log(f"rendering {SCENES} scenes of world seed {TRAIN_SEED}")
        images = np.stack([demo_world.render(demo_world.scene(TRAIN_SEED, i)) for i in range(SCENES)])
        captions = [demo_world.scene(TRAIN_SEED, i).caption for i in range(SCENES)]
        np.save(WORK / "images.tmp.npy", images)
        os.replace(WORK / "images.tmp.npy", path)
        (WORK / "captions.json").write_text(json.dumps(captions))
    return np.load(path, mmap_mode="r")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, h, w, 3] -> float [n, 3, h, w] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def token_ids(captions: list[str]) -> torch.Tensor:
    tok = tokenizer()
    out = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return out.input_ids


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(stage: str, step: int, state: dict) -> None:
    tmp = WORK / f"{stage}.ckpt.tmp"
    torch.save({"step": step, **state}, tmp)
    os.replace(tmp, WORK / f"{stage}.ckpt")


def load_checkpoint(stage: str):
    path = WORK / f"{stage}.ckpt"
    return torch.load(path, weights_only=False) if path.exists() else None


def done(stage: str) -> bool:
    ck = load_checkpoint(stage)
    return ck is not None and ck["step"] >= STAGES[stage]["steps"]


# --------------------------------------------------------------------------- models


def new_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(11)
    return AutoencoderKL(**VAE_CONFIG)


def new_unet_and_text():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(12)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(13)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return unet, text


class FeatureNet(nn.Module):
    """pytorch-fid's interface (input [n, 3, 299, 299] in [-1, 1]; four globally
    average-pooled blocks of 64, 192, 768 and 2048 channels) on a small convolutional
    network trained on the demo world's labels. Not Inception: its FIDs are the demo's own."""

    def __init__(self):
        super().__init__()

        def conv(i, o, k, s):
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2), nn.GroupNorm(8, o), nn.SiLU())

        self.block0 = nn.Sequential(conv(3, 32, 4, 4), conv(32, 64, 3, 2))  # 75 -> 38
        self.block1 = conv(64, 192, 3, 2)  # 19
        self.block2 = nn.Sequential(conv(192, 256, 3, 2), conv(256, 768, 1, 1))  # 10
        self.block3 = nn.Sequential(conv(768, 256, 1, 1), conv(256, 256, 3, 2), conv(256, 2048, 1, 1))  # 5
        self.head = nn.Linear(2048, len(LABELS))

    def forward(self, x):
        a = self.block0(x)
        b = self.block1(a)
        c = self.block2(b)
        d = self.block3(c)
        return [t.mean(dim=(2, 3)) for t in (a, b, c, d)]


# colour present (5), shape present (3), object count (3), background (3)
LABELS = (
    [f"colour:{c}" for c in demo_world.COLOURS]
    + [f"shape:{s}" for s in demo_world.SHAPES]
    + ["count:1", "count:2", "count:3"]
    + [f"background:{b}" for b in demo_world.BACKGROUNDS]
)


def scene_labels(s) -> np.ndarray:
    y = np.zeros(len(LABELS), dtype=np.float32)
    for o in s.objects:
        y[LABELS.index(f"colour:{o.colour}")] = 1
        y[LABELS.index(f"shape:{o.shape}")] = 1
    y[LABELS.index(f"count:{len(s.objects)}")] = 1
    y[LABELS.index(f"background:{s.background}")] = 1
    return y


def fid_preprocess(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images at 256 -> 299 as tomex/pytorch-fid resize them (bilinear)."""
    return F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1


# --------------------------------------------------------------------------- stages


def train_vae(images, bench=False):
    """The encoder learns to give each scene's layout latent (LAYOUT, its posterior mean;
    its variance small), and the decoder to draw the scene from that layout latent, as
    degraded as the UNet's (degrade): two losses on one VAE, neither feeding the other."""
    cfg = STAGES["vae"]
    vae = new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    start = 0
    ck = load_checkpoint("vae")
    if ck and not bench:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
    latents = stored_latents()["latents"] if not bench else None
    steps = 4 if bench else cfg["steps"]
    t0 = time.time()
    for step in range(start, steps):
        g = step_generator("vae", step)
        idx = torch.randint(0, len(images), (cfg["batch"],), generator=g).sort().values.numpy()
        x = to_tensor(images[idx])
        z = latents[idx].float() if latents is not None else layout_latents([demo_world.scene(TRAIN_SEED, int(i)) for i in idx])
        if step < cfg["steps"] - VAE_FULL_STEPS:
            # Random 16x16-latent crops (128 px, 4x cheaper); the last steps see whole
            # images so the mid-block attention settles at the 32x32 latents it decodes in use.
            y0, x0 = (int(v) for v in torch.randint(0, 17, (2,), generator=g))
            x = x[:, :, 8 * y0 : 8 * y0 + 128, 8 * x0 : 8 * x0 + 128]
            z = z[:, :, y0 : y0 + 16, x0 : x0 + 16]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast():
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(degrade(z, g)).sample.float()
        encoder_loss = F.mse_loss(posterior.mean.float(), z) + 0.01 * F.mse_loss(posterior.logvar.float(), torch.full_like(z, LOGVAR))
        decoder_loss = object_weighted_loss(rec, x, object_weights(x))
        loss = decoder_loss + encoder_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if bench:
            log(f"vae step {step}: {time.time() - t0:.2f} s")
            t0 = time.time()
            continue
        if step % 50 == 0 or step + 1 == steps:
            log(f"vae {step + 1}/{steps} decoder loss {decoder_loss.item():.5f} encoder loss {encoder_loss.item():.5f} lr {lr_at(step, cfg):.2e}")
        if (step + 1) % cfg["every"] == 0 or step + 1 == steps:
            if (step + 1) % ROUND_TRIP_EVERY == 0 or step + 1 == steps:
                log(f"vae {step + 1}: " + vae_round_trip(vae))
            save_checkpoint("vae", step + 1, {"model": vae.state_dict(), "opt": opt.state_dict()})
    return vae


# A disc with no tag is a circle: the twelfth run tagged triangles 0 (circle +1), and the
# decoder drew the UNet's untagged, irregular triangle blobs round (4 of 25 probe triangles).
SHAPE_TAGS = {"circle": 0.0, "square": -1.0, "triangle": 1.0}  # background 0: colours tell it apart
LOGVAR = math.log(0.01**2)  # the encoder's posterior: std 0.01 around the layout latent
LAYOUT_SUPERSAMPLE = 2  # layout latents are drawn at 2x 256 px and box-filtered to 1/16 of that


def layout_latent(scene) -> np.ndarray:
    """The latent a scene is stored as (float32 [4, 32, 32]): channels 0-2 its colours at
    1/8 size (in [-1, 1]) with every object drawn as the disc inscribed in its box, channel
    3 the object's SHAPE_TAGS value over the same disc (0 on the background).

    The shape is a value over the whole object and the outline is a disc for every shape:
    what the UNet has to draw is position, size, colour and a tag, and the decoder draws
    the shape's edges and corners. Latents that were the scene at 1/8 size (the ninth run)
    left the squares' corners to the UNet, which rounded them from t = 300 on: 7 of 25
    probe squares drawn square although the tag under 25 of 25 said square."""
    k = LAYOUT_SUPERSAMPLE
    side = demo_world.SIZE * k
    colour = Image.new("RGB", (side, side), scene.background_rgb)
    tag = Image.new("F", (side, side), 0.0)
    draw_colour, draw_tag = ImageDraw.Draw(colour), ImageDraw.Draw(tag)
    for o in scene.objects:  # in the world's order: a later object covers an earlier one
        box = [(o.x - o.half) * k, (o.y - o.half) * k, (o.x + o.half) * k, (o.y + o.half) * k]
        draw_colour.ellipse(box, fill=o.rgb)
        draw_tag.ellipse(box, fill=SHAPE_TAGS[o.shape])
    cells = demo_world.SIZE // 8
    rgb = np.asarray(colour.resize((cells, cells), Image.BOX), dtype=np.float32) / 127.5 - 1.0
    shape = np.asarray(tag.resize((cells, cells), Image.BOX), dtype=np.float32)
    return np.concatenate([rgb.transpose(2, 0, 1), shape[None]])


def layout_latents(scenes) -> torch.Tensor:
    return torch.from_numpy(np.stack([layout_latent(s) for s in scenes]))


def degrade(z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Layout latents as the UNet gives them, for the decoder to learn from: each with noise
    of std up to DECODER_NOISE on half the batch (the ninth run's UNet left a cell-to-cell
    residual of 0.12 per channel where stored latents had 0.05), a Gaussian blur of 0.3-1
    cells on a third (soft outlines), channel 3 scaled by 0.7-1.15 on a third (a weak or
    strong tag; each stays nearest its own SHAPE_TAGS value)."""
    n = len(z)
    noisy = (torch.rand(n, 1, 1, 1, generator=g) < 0.5).float()
    sigma = DECODER_NOISE * torch.rand(n, 1, 1, 1, generator=g)
    blur = torch.rand(n, generator=g) < 1 / 3
    widths = 0.3 + 0.7 * torch.rand(n, generator=g)
    scaled = torch.rand(n, generator=g) < 1 / 3
    scales = 0.7 + 0.45 * torch.rand(n, generator=g)
    noise = torch.randn(z.shape, generator=g)
    out = z.clone()
    for k in range(n):
        if blur[k]:
            out[k] = gaussian_blur(out[k], float(widths[k]))
        if scaled[k]:
            out[k, 3] = out[k, 3] * scales[k]
    return out + noisy * sigma * noise


def gaussian_blur(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """[c, h, w] blurred by a separable Gaussian of `sigma` cells (5 taps, edges replicated)."""
    taps = torch.exp(-0.5 * (torch.arange(-2, 3, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    c = z.shape[0]
    x = F.pad(z[None], (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.conv2d(x, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return x[0]


def object_weights(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weights [n, 1, h, w] of images in [-1, 1]: 10 on objects (pixels
    away from the background, the median of the 4-pixel border), 1 elsewhere. Objects
    cover a few percent of a scene; unweighted, their colours hardly move the loss."""
    border = torch.cat([x[:, :, :4].flatten(2), x[:, :, -4:].flatten(2), x[:, :, :, :4].flatten(2), x[:, :, :, -4:].flatten(2)], 2)
    background = border.median(dim=2).values[:, :, None, None]
    return 1 + 9 * ((x - background).norm(dim=1, keepdim=True) > 0.2).float()


def object_weighted_loss(rec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    err = rec - x
    return ((err**2 + 0.5 * err.abs()) * weight).sum() / (weight.sum() * x.shape[1])


def vae_round_trip(vae) -> str:
    """How many of 100 held-out probe scenes (`a <colour> <shape>`, world seed 2) keep
    their colour and shape when the decoder draws their layout latents (the ceiling of
    the demo model's prompt following) and through encode + decode, judged as
    tools/demo_judge.py judges generated images."""
    import demo_judge

    scenes = [demo_world.single_caption_scene(2, i) for i in range(100)]
    vae.eval()
    with torch.no_grad():
        drawn = vae.decode(layout_latents(scenes)).sample
        round_trip = vae.decode(vae.encode(to_tensor(np.stack([demo_world.render(s) for s in scenes]))).latent_dist.mean).sample
    vae.train()
    out = []
    for y in (drawn, round_trip):
        colour = shape = 0
        for image, s in zip(((y.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), scenes):
            c, h = demo_judge.judge(image)
            colour += c == s.objects[0].colour
            shape += h == s.objects[0].shape
        out.append(f"colour right {colour}, shape right {shape}")
    return f"100 held-out probe scenes: from their layout latents {out[0]}; encoded and decoded {out[1]}"


def train_decoder(images, threads: int):
    """The decoder alone (and post_quant_conv) from the VAE stage's, on whole degraded
    layout latents as well as crops: what the UNet makes is drawn by this decoder."""
    torch.set_num_threads(threads)
    cfg = STAGES["decoder"]
    vae = new_vae()
    vae.load_state_dict(load_checkpoint("vae")["model"])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    start = 0
    ck = load_checkpoint("decoder")
    if ck:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
    latents = stored_latents()["latents"]
    windows = object_windows()
    for step in range(start, cfg["steps"]):
        g = step_generator("decoder", step)
        cycle_step, cycle = decoder_cycle(step, cfg)
        if cycle_step < cycle["steps"] - DECODER_FULL_STEPS:
            # 16x16-latent windows (128 px) holding a whole object of a one-object scene,
            # and random crops: the shape is drawn from the tag over the whole disc, which
            # a crop through the object hides (from random crops alone it learnt too
            # slowly: after 1200 steps it drew one blob for every tag).
            z, x = object_window_pairs(latents, images, windows, cfg["batch"], g)
            idx = torch.randint(0, len(images), (cfg["crop_batch"],), generator=g).sort().values
            y0, x0 = (int(v) for v in torch.randint(0, 17, (2,), generator=g))
            z = torch.cat([z, latents[idx, :, y0 : y0 + 16, x0 : x0 + 16].float()])
            x = torch.cat([x, to_tensor(images[idx.numpy()])[:, :, 8 * y0 : 8 * y0 + 128, 8 * x0 : 8 * x0 + 128]])
        else:
            # The last steps see whole images, as the decoder decodes them in use.
            idx = torch.randint(0, len(images), (cfg["batch"],), generator=g).sort().values
            z, x = latents[idx].float(), to_tensor(images[idx.numpy()])
        z = degrade(z, g)
        for group in opt.param_groups:
            group["lr"] = lr_at(cycle_step, cycle)
        with autocast():
            rec = vae.decode(z).sample.float()
        loss = object_weighted_loss(rec, x, object_weights(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step + 1 == cfg["steps"]:
            log(f"decoder {step + 1}/{cfg['steps']} loss {loss.item():.5f} lr {lr_at(cycle_step, cycle):.2e}")
        if (step + 1) % cfg["every"] == 0 or step + 1 == cfg["steps"]:
            if (step + 1) % ROUND_TRIP_EVERY == 0 or step + 1 == cfg["steps"]:
                log(f"decoder {step + 1}: " + vae_round_trip(vae))
            save_checkpoint("decoder", step + 1, {"model": vae.state_dict(), "opt": opt.state_dict()})
    torch.set_num_threads(THREADS)


def decoder_cycle(step: int, cfg: dict) -> tuple[int, dict]:
    """(step within its cycle, that cycle's steps and peak rate) of a decoder step. After
    the first cycle (2000 steps) the decoder drew all 100 probe shapes right from clean
    layout latents, but it had learnt triangles (then tagged 0, the background's value)
    last, in its final 200 steps: a warm restart gives it more steps at a useful rate
    (tools/demo/train.log, twelfth run)."""
    first = 0
    for steps, scale in cfg["cycles"]:
        if step < first + steps:
            return step - first, {"steps": steps, "lr": cfg["lr"] * scale}
        first += steps
    raise ValueError(f"decoder step {step} is past the stage's cycles")


def stored_latents() -> dict:
    """{"latents": every training scene's layout latent (unscaled, float16), "scaling_factor":
    the VAE's (1 / their std, as SD's VAEs are scaled)}, written once to latents.pt."""
    path = WORK / "latents.pt"
    if not path.exists():
        scenes = (demo_world.scene(TRAIN_SEED, i) for i in range(SCENES))
        latents = layout_latents(list(scenes))
        scaling = float(1.0 / latents.std())
        log(f"layout latents {tuple(latents.shape)} mean {latents.mean():.4f} std {latents.std():.4f} -> scaling_factor {scaling:.5f}")
        torch.save({"latents": latents.half(), "scaling_factor": scaling}, WORK / "latents.tmp.pt")
        os.replace(WORK / "latents.tmp.pt", path)
    return torch.load(path)


PLACE_PHRASE = re.compile(" (" + "|".join(demo_world.PLACES) + ")")


def object_windows():
    """The one-object training scenes as windows of the UNet's first steps: each scene's
    index, its caption less the place (a window moves the object), and the range of
    window corners (latent cells, y then x) that keep the whole object inside."""
    out = []
    cells = demo_world.SIZE // 8  # the latents' side
    last = cells - WINDOW
    for i in range(SCENES):
        s = demo_world.scene(TRAIN_SEED, i)
        if len(s.objects) != 1:
            continue
        o = s.objects[0]
        ranges = []
        for c in (o.y, o.x):
            # 2 px of background around the object's anti-aliased edge
            lo = max(0, math.ceil((c + o.half + 2 - 8 * WINDOW) / 8))
            hi = min(last, math.floor((c - o.half - 2) / 8))
            ranges.append((lo, max(lo, hi)))
        out.append((i, PLACE_PHRASE.sub("", s.caption), ranges))
    return out


def window_corners(windows, batch, g):
    """`batch` windows drawn from object_windows(): the picks (tensor) and each one's
    (scene index, corner y, corner x) in latent cells, uniform over the corners that keep
    the object inside."""
    pick = torch.randint(0, len(windows), (batch,), generator=g)
    u = torch.rand(batch, 2, generator=g)
    corners = []
    for k, w in enumerate(pick.tolist()):
        index, _, ((ylo, yhi), (xlo, xhi)) = windows[w]
        corners.append((index, ylo + int(u[k, 0] * (yhi - ylo + 1)), xlo + int(u[k, 1] * (xhi - xlo + 1))))
    return pick, corners


def window_batch(latents, windows, states, batch, g):
    """A batch of object windows of the scenes' latents and their captions' states."""
    pick, corners = window_corners(windows, batch, g)
    x0 = torch.stack([latents[i, :, y : y + WINDOW, x : x + WINDOW] for i, y, x in corners])
    return x0, states[pick]


def object_window_pairs(latents, images, windows, batch, g):
    """A batch of object windows: layout latents [n, 4, 16, 16] and their images' 128 px."""
    _, corners = window_corners(windows, batch, g)
    z = torch.stack([latents[i, :, y : y + WINDOW, x : x + WINDOW].float() for i, y, x in corners])
    x = to_tensor(np.stack([images[i, 8 * y : 8 * (y + WINDOW), 8 * x : 8 * (x + WINDOW)] for i, y, x in corners]))
    return z, x


class Ema:
    def __init__(self, modules):
        self.shadow = [{k: v.detach().clone().float() for k, v in m.state_dict().items()} for m in modules]

    def update(self, modules, step):
        decay = min(EMA_MAX, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, m in zip(self.shadow, modules):
                for k, v in m.state_dict().items():
                    if v.dtype.is_floating_point:
                        shadow[k].mul_(decay).add_(v.float(), alpha=1 - decay)
                    else:
                        shadow[k].copy_(v)


CAPTION_OBJECT = re.compile(r"a (?:(small|large) )?(" + "|".join(demo_world.COLOURS) + r") (" + "|".join(demo_world.SHAPES) + ")")
BACKGROUND_PHRASE = re.compile(r"on a (" + "|".join(demo_world.BACKGROUNDS) + ") background")
RELATIONS = ("left of", "right of", "above", "below", "and")
SLOT_SIZES = (None, "small", "large")


def caption_labels(caption: str) -> np.ndarray:
    """What a caption says, as the text stage's targets: for each of three object slots
    (left to right in the caption) its colour, shape and stated size; each colour-shape
    pair named; the background, place and relation named (or none); the object count."""
    objects = CAPTION_OBJECT.findall(caption)
    colours, shapes = list(demo_world.COLOURS), list(demo_world.SHAPES)
    y = []
    for slot in range(3):
        colour = np.zeros(len(colours) + 1, np.float32)
        shape = np.zeros(len(shapes) + 1, np.float32)
        size = np.zeros(len(SLOT_SIZES), np.float32)
        if slot < len(objects):
            s, c, h = objects[slot]
            colour[colours.index(c)] = shape[shapes.index(h)] = size[SLOT_SIZES.index(s or None)] = 1
        else:
            colour[-1] = shape[-1] = size[0] = 1
        y += [colour, shape, size]
    pairs = np.zeros(len(colours) * len(shapes), np.float32)
    for _, c, h in objects:
        pairs[colours.index(c) * len(shapes) + shapes.index(h)] = 1
    background = np.zeros(len(demo_world.BACKGROUNDS) + 1, np.float32)
    m = BACKGROUND_PHRASE.search(caption)
    background[list(demo_world.BACKGROUNDS).index(m.group(1)) if m else -1] = 1
    place = np.zeros(len(demo_world.PLACES) + 1, np.float32)
    named = [i for i, p in enumerate(demo_world.PLACES) if p in caption]
    place[named[0] if named else -1] = 1
    relation = np.zeros(len(RELATIONS) + 1, np.float32)
    related = [i for i, r in enumerate(RELATIONS) if len(objects) == 2 and f" {r} a " in caption]
    relation[related[0] if related else -1] = 1
    count = np.zeros(3, np.float32)
    count[max(1, len(objects)) - 1] = 1
    return np.concatenate(y + [pairs, background, place, relation, count])


def train_text(bench=False):
    """The text encoder alone: its pooled state (the end token's, as CLIP pools) names what
    the caption says through a linear head that is thrown away afterwards."""
    cfg = STAGES["text"]
    captions = json.loads((WORK / "captions.json").read_text())
    ids = token_ids(captions)
    labels = torch.from_numpy(np.stack([caption_labels(c) for c in captions]))
    _, text = new_unet_and_text()
    torch.manual_seed(15)
    head = nn.Linear(TEXT_CONFIG["hidden_size"], labels.shape[1])
    params = list(text.parameters()) + list(head.parameters())
    # No weight decay: it would shrink the embedding rows of tokens the captions never use.
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    start = 0
    ck = load_checkpoint("text")
    if ck and not bench:
        text.load_state_dict(ck["text"])
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
    steps = 4 if bench else cfg["steps"]
    for step in range(start, steps):
        g = step_generator("text", step)
        idx = torch.randint(0, len(captions), (cfg["batch"],), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        out = text(ids[idx])
        # The pooled state and the mean over all 77 positions both name the caption: the
        # padding positions (which see the whole caption) then carry it too, so even the
        # near-uniform attention of an untrained cross-attention passes it on.
        logits = head(out.pooler_output)
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx]) + F.binary_cross_entropy_with_logits(
            head(out.last_hidden_state.mean(dim=1)), labels[idx]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step + 1 == steps:
            with torch.no_grad():
                exact = ((logits > 0).float() == labels[idx]).all(dim=1).float().mean()
            log(f"text {step + 1}/{steps} loss {loss.item():.4f} captions read exactly {exact.item():.3f}")
        if not bench and ((step + 1) % cfg["every"] == 0 or step + 1 == steps):
            save_checkpoint("text", step + 1, {"text": text.state_dict(), "head": head.state_dict(), "opt": opt.state_dict()})
    return text


def frozen_text():
    _, text = new_unet_and_text()
    text.load_state_dict(load_checkpoint("text")["text"])
    text.eval().requires_grad_(False)
    return text


def text_states(text, captions: list[str]) -> torch.Tensor:
    ids = token_ids(captions)
    with torch.no_grad():
        return torch.cat([text(ids[i : i + 512]).last_hidden_state for i in range(0, len(ids), 512)])


def train_unet(bench=False):
    from diffusers import DDPMScheduler

    cfg = STAGES["unet"]
    if bench:
        latents = torch.randn(256, 4, 32, 32)
    else:
        data = stored_latents()
        latents = data["latents"].float() * data["scaling_factor"]
    captions = json.loads((WORK / "captions.json").read_text()) if not bench else ["a red circle"] * 256
    windows = object_windows() if not bench else [(i, "a red circle", ((0, 16), (0, 16))) for i in range(256)]
    # The encoder is frozen: every caption's states once, float32 as the UNet sees them.
    text = frozen_text() if not bench else new_unet_and_text()[1]
    states_all = text_states(text, captions)
    empty = text_states(text, [""])[0]
    window_states = text_states(text, [w[1] for w in windows])
    unet, _ = new_unet_and_text()
    silence_cross_attention(unet)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], weight_decay=0.01)
    ema = Ema([unet])
    start = 0
    ck = load_checkpoint("unet")
    if ck and not bench:
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        ema.shadow = ck["ema"]
        start = ck["step"]
    sched = DDPMScheduler(
        **{k: SCHEDULER_CONFIG[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    )
    probe = conditioning_probe(latents, states_all, empty, sched)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    # --bench: BENCH_STEPS window steps, then as many whole-scene steps
    steps = 2 * BENCH_STEPS if bench else cfg["steps"]
    window_steps = BENCH_STEPS if bench else cfg["window_steps"]
    timings = {"window": [], "whole-scene": []}
    t0 = time.time()
    running = None
    for step in range(start, steps):
        g = step_generator("unet", step)
        # The first steps see windows around single objects: 16x16 latents cost a quarter
        # of the convolutions and a sixteenth of the full-resolution attention, and show
        # each shape at the size it has at 256 px (half-size scenes, the fifth run's
        # start, drew them 2 to 7 latents across and left corners round); the rest
        # teach whole scenes: backgrounds, places, several objects.
        if step < window_steps:
            batch = cfg["window_batch"]
            x0, states = window_batch(latents, windows, window_states, batch, g)
        else:
            batch = cfg["batch"]
            idx = torch.randint(0, len(latents), (batch,), generator=g)
            x0, states = latents[idx], states_all[idx].clone()
        drop = torch.rand(batch, generator=g) < CAPTION_DROP
        states[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        noise = noise + OFFSET_NOISE * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        # The 1/SNR weights below lift high noise; without more low-noise draws the steps
        # that sharpen edges and flatten backgrounds got under a tenth of the gradient
        # (the fifth run's squares came out as blobs, its backgrounds speckled).
        low = int(batch * LOW_NOISE_SHARE)
        t[:low] = torch.randint(0, LOW_NOISE_T, (low,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast():
            pred = unet(xt, t, encoder_hidden_states=states).sample.float()
        # Per-timestep weights (the optimum at each t, and so the model's meaning, is
        # unchanged): epsilon's error at high noise is the image's error scaled by
        # sqrt(SNR), so plain MSE hardly sees the steps where the caption decides the
        # colours and the background. 1/SNR, clamped to [1, 10], lifts them.
        weight = (1 / snr[t]).clamp(1.0, MAX_LOSS_WEIGHT)
        per_image = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight * per_image).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update([unet], step)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if bench:
            kind = "window" if step < window_steps else "whole-scene"
            timings[kind].append(time.time() - t0)
            log(f"unet step {step} ({kind}): {timings[kind][-1]:.2f} s")
            t0 = time.time()
            continue
        if step % 50 == 0 or step + 1 == steps:
            log(f"unet {step + 1}/{steps} loss {loss.item():.4f} (running {running:.4f}) lr {lr_at(step, cfg):.2e}")
        if (step + 1) % cfg["every"] == 0 or step + 1 == steps:
            log(f"unet {step + 1}: " + probe(unet))
            save_checkpoint("unet", step + 1, {"unet": unet.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow})
    if bench:
        log(unet_stage_estimate(cfg, timings))


def unet_stage_estimate(cfg: dict, timings: dict) -> str:
    """The UNet stage's length on this machine from --bench's step times (the first step of
    each kind, a warm-up, left out): the stage is most of the script's two hours, and its
    speed depends on the CPU (bfloat16 without AMX is about a fifth slower)."""
    window = float(np.median(timings["window"][1:] or timings["window"]))
    scene = float(np.median(timings["whole-scene"][1:] or timings["whole-scene"]))
    scenes = cfg["steps"] - cfg["window_steps"]
    minutes = (cfg["window_steps"] * window + scenes * scene) / 60
    return (
        f"unet stage on this machine: {cfg['window_steps']} window steps x {window:.2f} s + {scenes} "
        f"whole-scene steps x {scene:.2f} s = about {minutes:.0f} minutes (its probes and checkpoints add a few)"
    )


def silence_cross_attention(unet) -> None:
    """Zero the output projections of every cross-attention, so the text path starts
    silent and grows only where it lowers the loss (the zero-initialised conditioning
    of ControlNet and DiT's adaLN-Zero). With diffusers' random initialisation the
    caption enters as noise the young UNet learns to suppress: in the second run its loss
    was the same with a scene's own caption, another's or none after 600 steps."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()


def conditioning_probe(latents, states_all, empty, sched):
    """Whether the UNet reads the text: its loss on 32 fixed noised scenes at t = 700 and
    900 (where the caption decides what the image becomes) with their own captions, with another scene's, and with the empty caption. Equal
    losses mean the text is ignored (the first run's failure)."""
    g = torch.Generator().manual_seed(99)
    idx = torch.randint(0, len(latents), (32,), generator=g)
    x0, own = latents[idx], states_all[idx]
    other, blank = own.roll(1, dims=0), empty.expand_as(own)
    noise = torch.randn(x0.shape, generator=g)

    def run(unet) -> str:
        out = []
        with torch.no_grad(), autocast():
            for tv in (700, 900):
                t = torch.full((32,), tv)
                xt = sched.add_noise(x0, noise, t)
                losses = [F.mse_loss(unet(xt, t, encoder_hidden_states=s).sample.float(), noise).item() for s in (own, other, blank)]
                out.append(f"t={tv} loss with own caption {losses[0]:.4f}, another's {losses[1]:.4f}, empty {losses[2]:.4f}")
        return "; ".join(out)

    return run


def train_features(images, bench=False):
    cfg = STAGES["features"]
    labels = torch.from_numpy(np.stack([scene_labels(demo_world.scene(TRAIN_SEED, i)) for i in range(len(images))]))
    torch.manual_seed(14)
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.01)
    start = 0
    ck = load_checkpoint("features")
    if ck and not bench:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
    steps = 4 if bench else cfg["steps"]
    t0 = time.time()
    for step in range(start, steps):
        g = step_generator("features", step)
        idx = torch.randint(0, len(images), (cfg["batch"],), generator=g).sort().values
        x = fid_preprocess(to_tensor(images[idx.numpy()]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast():
            logits = net.head(net(x)[3]).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bench:
            log(f"features step {step}: {time.time() - t0:.2f} s")
            t0 = time.time()
            continue
        if step % 50 == 0 or step + 1 == steps:
            log(f"features {step + 1}/{steps} loss {loss.item():.4f}")
        if (step + 1) % cfg["every"] == 0 or step + 1 == steps:
            save_checkpoint("features", step + 1, {"model": net.state_dict(), "opt": opt.state_dict()})
    return net


def held_out_feature_accuracy(net) -> None:
    """Label accuracy on 256 scenes of the held-out world seed 2 (the log says how far
    the feature network can be trusted to tell this world's scenes apart)."""
    scenes = [demo_world.scene(2, i) for i in range(256)]
    x = fid_preprocess(to_tensor(np.stack([demo_world.render(s) for s in scenes])))
    y = torch.from_numpy(np.stack([scene_labels(s) for s in scenes]))
    net.eval()
    with torch.no_grad():
        pred = (net.head(net(x)[3]) > 0).float()
    acc = (pred == y).float().mean(dim=0)
    log("feature network held-out label accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in zip(LABELS, acc.tolist())))


# --------------------------------------------------------------------------- save


def save_pipeline():
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    lat = stored_latents()
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=round(lat["scaling_factor"], 5))
    vae.load_state_dict(load_checkpoint("decoder")["model"])
    unet, _ = new_unet_and_text()
    unet.load_state_dict(load_checkpoint("unet")["ema"][0])
    text = frozen_text()
    assert isinstance(unet, UNet2DConditionModel)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if PIPELINE_DIR.exists():
        shutil.rmtree(PIPELINE_DIR)
    pipe.save_pretrained(PIPELINE_DIR)
    # transformers 5 writes CLIPTextModel's weights without the `text_model.` prefix, which
    # transformers 4 (optimum's exporter) then fails to find and initialises at random;
    # write them as SD 1.5's repository has them, which both load.
    from safetensors.torch import load_file, save_file

    weights = PIPELINE_DIR / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, weights,
              metadata={"format": "pt"})
    # The tokenizer as SD 1.5's repository has it (vocab.json + merges.txt, which
    # transformers 4 and 5 both load), not transformers 5's tokenizer.json alone.
    tok_dir = PIPELINE_DIR / "tokenizer"
    shutil.rmtree(tok_dir)
    shutil.copytree(TOKENIZER_DIR, tok_dir)
    log(f"wrote {PIPELINE_DIR}")

    ck = load_checkpoint("features")
    if ck is None:
        # `--only ... save` without the features stage: a UNet retrain leaves the FID
        # network, and so every demo FID's scale, as it is.
        log(f"no features checkpoint: {FEATURES_ONNX} left as it is")
        return
    net = FeatureNet()
    net.load_state_dict(ck["model"])
    net.eval()
    held_out_feature_accuracy(net)
    FEATURES_ONNX.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, 299, 299)
    torch.onnx.export(
        net,
        (dummy,),
        str(FEATURES_ONNX),
        input_names=["images"],
        output_names=["features_64", "features_192", "features_768", "features_2048"],
        dynamic_axes={n: {0: "n"} for n in ["images", "features_64", "features_192", "features_768", "features_2048"]},
        opset_version=17,
        dynamo=False,
    )
    log(f"wrote {FEATURES_ONNX}")


def main():
    global USE_BF16
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true", help="time a few steps of each stage and stop")
    ap.add_argument("--only", nargs="*", default=None, help="stages to run (default: all in order)")
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 throughout")
    ap.add_argument("--smoke", action="store_true", help="every stage end to end in seconds, into /tmp")
    ap.add_argument("--decoder-threads", type=int, default=THREADS, help="threads of the decoder stage")
    args = ap.parse_args()
    USE_BF16 = not args.no_bf16
    if args.smoke:
        global WORK, PIPELINE_DIR, FEATURES_ONNX, SCENES, VAE_FULL_STEPS
        WORK = Path("/tmp/train_demo_smoke")
        PIPELINE_DIR, FEATURES_ONNX = WORK / "diffusers", WORK / "features.onnx"
        SCENES, VAE_FULL_STEPS = 64, 2
        for cfg in STAGES.values():
            cfg.update(steps=5, every=3)
        STAGES["unet"].update(window_steps=2, window_batch=4)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"torch {torch.__version__}, {THREADS} threads, bfloat16 autocast {USE_BF16}")
    if args.bench:
        images = np.stack([demo_world.render(demo_world.scene(TRAIN_SEED, i)) for i in range(64)])
        train_vae(images, bench=True)
        train_unet(bench=True)
        train_features(images, bench=True)
        return
    stages = args.only or ["data", "latents", "vae", "decoder", "text", "unet", "features", "save"]
    images = load_images()
    if "latents" in stages:
        stored_latents()
    if "vae" in stages and not done("vae"):
        train_vae(images)
    if "decoder" in stages and not done("decoder"):
        train_decoder(images, args.decoder_threads)
    if "text" in stages and not done("text"):
        train_text()
    if "unet" in stages and not done("unet"):
        train_unet()
    if "features" in stages and not done("features"):
        train_features(images)
    if "save" in stages:
        save_pipeline()


if __name__ == "__main__":
    main()
