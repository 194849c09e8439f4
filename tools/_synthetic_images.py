"""Unlabelled test images generated here, nothing downloaded (tools/bench_unlabelled.py).

Three kinds, one per model family the benchmark prunes:
  text    words and numbers rendered with PIL from the Debian DejaVu fonts on light, noisy
          backgrounds (PP-OCR's text detector);
  scene   a smooth, textured background with low-contrast clutter and one large, saturated
          object (a salient-object segmenter: u2netp);
  slider  slider-captcha-like pictures: a textured scene, letterboxed into a square as
          Ultralytics does, with a darkened puzzle-piece gap outlined in white (the YOLO11-seg
          slider detector of captcha-recognizer).
They are synthetic, not photographs: the quality metric compares each pruned model with the
original on the same images, so they only have to make the original respond as it does
on its task (text found, an object segmented, a gap detected).
"""
from __future__ import annotations

import glob
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu/*.ttf"


def _noise_field(rng, h, w, cells, amp):
    """Low-frequency texture: a small random grid resized bicubically."""
    g = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(g + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, np.float32) - 128


def _background(rng, h, w, low=60, high=230):
    c0, c1 = rng.integers(low, high, 3), rng.integers(low, high, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    bg = c0 * (1 - t) + c1 * t + np.zeros((h, w, 3))
    return bg + _noise_field(rng, h, w, int(rng.integers(4, 12)), 25)


def _finish(arr, rng, noise=5.0) -> Image.Image:
    arr = arr + rng.normal(0, noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def text_image(rng, size: int) -> Image.Image:
    fonts = sorted(glob.glob(FONTS))
    if not fonts:
        raise SystemExit(f"no fonts at {FONTS} (apt-get install fonts-dejavu-core)")
    img = _finish(_background(rng, size, size, 150, 256), rng, 4)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(size // 16, size // 7)))
        alphabet = string.digits if rng.random() < 0.3 else string.ascii_letters + string.digits
        words = ["".join(rng.choice(list(alphabet), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(1, 4)))]
        x, y = int(rng.integers(0, size * 3 // 4)), int(rng.integers(0, size - size // 8))
        d.text((x, y), " ".join(words), fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
    arr = np.asarray(img, np.float32)
    return _finish(arr, rng, 4).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.6))))


def _clutter(d, rng, h, w, n, base):
    for _ in range(n):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(w // 40, w // 10))
        col = tuple(int(np.clip(v + rng.normal(0, 25), 0, 255)) for v in base)
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r), fill=col)


def scene_image(rng, size: int) -> Image.Image:
    bg = _background(rng, size, size, 50, 200)
    img = _finish(bg, rng, 3)
    d = ImageDraw.Draw(img)
    _clutter(d, rng, size, size, int(rng.integers(4, 12)), bg.mean(axis=(0, 1)))
    # the salient object: a large saturated blob, shaded, roughly central
    mask = Image.new("L", (size, size), 0)
    md = ImageDraw.Draw(mask)
    cx, cy = (int(v) for v in rng.normal(size / 2, size / 10, 2))
    rx, ry = (int(v) for v in rng.integers(size // 7, size // 3, 2))
    if rng.random() < 0.5:
        md.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    else:
        ang = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
        md.polygon([(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in ang], fill=255)
    col = np.zeros(3)
    col[int(rng.integers(3))] = 230
    col[int(rng.integers(3))] += rng.uniform(0, 120)
    shade = np.linspace(1.0, 0.6, size)[:, None, None] * np.clip(col, 0, 255) + _noise_field(rng, size, size, 8, 15)
    img = Image.composite(_finish(shade, rng, 3), img, mask.filter(ImageFilter.GaussianBlur(1)))
    return img


def _piece(size: int, rng) -> Image.Image:
    """A puzzle-piece mask: a square with a round knob on two sides."""
    s = size
    m = Image.new("L", (2 * s, 2 * s), 0)
    d = ImageDraw.Draw(m)
    o, k = s // 2, s // 4
    d.rectangle((o, o, o + s, o + s), fill=255)
    d.ellipse((o + s // 2 - k // 1, o - k, o + s // 2 + k, o + k), fill=255)          # top knob
    d.ellipse((o + s - k, o + s // 2 - k, o + s + k, o + s // 2 + k), fill=255)       # right knob
    return m


def slider_image(rng, size: int = 640) -> Image.Image:
    w, h = size, size // 2
    scene = np.asarray(scene_image(rng, w).resize((w, h)), np.float32)
    gap = int(rng.integers(h // 5, h // 3))
    piece = _piece(gap, rng)
    x, y = int(rng.integers(w // 3, w - 2 * gap)), int(rng.integers(0, h - 2 * gap))
    mask = np.zeros((h, w), np.float32)
    pm = np.asarray(piece, np.float32) / 255
    mask[y:y + pm.shape[0], x:x + pm.shape[1]] = pm[:h - y, :w - x]
    edge = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.FIND_EDGES)
                      .filter(ImageFilter.MaxFilter(3)), np.float32) / 255
    dark = float(rng.uniform(0.35, 0.6))
    arr = scene * (1 - mask[..., None] * (1 - dark)) + edge[..., None] * 200
    canvas = np.full((size, size, 3), 114.0)           # Ultralytics' letterbox grey
    top = (size - h) // 2
    canvas[top:top + h] = arr
    return _finish(canvas, rng, 2)


KINDS = {"text": text_image, "scene": scene_image, "slider": slider_image}


def write_folder(folder: Path, kind: str, n: int, size: int, seed: int) -> Path:
    """n images of `kind` as PNGs in a flat (unlabelled) folder; kept when already complete."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == n:
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        KINDS[kind](rng, size).save(folder / f"{kind}_{i:04d}.png")
    return folder
