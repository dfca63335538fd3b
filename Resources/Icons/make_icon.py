"""Draw the extension and module icon (128 x 128 PNG): a TRUS fan with speckle, the MRI fused over one
half, the prostate outline and a biopsy target.

    python Resources/Icons/make_icon.py

writes ``Resources/Icons/MRITRUSFusion.png`` (Extension Manager) and
``MRITRUSFusion/Resources/Icons/MRITRUSFusion.png`` (module panel). Needs numpy and Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128
SCALE = 4  # draw at 4x and downsample, for smooth edges
REPO = Path(__file__).resolve().parents[2]
OUTPUTS = (REPO / "Resources" / "Icons" / "MRITRUSFusion.png",
           REPO / "MRITRUSFusion" / "Resources" / "Icons" / "MRITRUSFusion.png")


def fan_mask(size: int) -> Image.Image:
    """The sector a TRUS probe at the bottom centre sees."""
    mask = Image.new("L", (size, size), 0)
    apex = (size * 0.5, size * 1.02)
    radius = size * 0.98
    box = (apex[0] - radius, apex[1] - radius, apex[0] + radius, apex[1] + radius)
    ImageDraw.Draw(mask).pieslice(box, start=-90 - 42, end=-90 + 42, fill=255)
    return mask


def speckle(size: int, seed: int = 7) -> Image.Image:
    """Rayleigh-like speckle, brighter near the probe."""
    rng = np.random.default_rng(seed)
    noise = rng.rayleigh(0.35, (size // SCALE, size // SCALE))
    depth = np.linspace(0.55, 1.0, size // SCALE)[:, None]
    image = Image.fromarray(np.clip(noise * depth * 255, 0, 255).astype(np.uint8))
    return image.resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(SCALE * 0.6))


def prostate_outline(size: int) -> list:
    """A walnut-shaped gland outline (points in pixels), wider at the base, notched posteriorly."""
    angles = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    radius = 1 + 0.10 * np.cos(2 * angles) - 0.07 * np.exp(-((angles - np.pi / 2) ** 2) / 0.08)
    x = size * (0.5 + 0.27 * radius * np.cos(angles))
    y = size * (0.52 + 0.21 * radius * np.sin(angles))
    return list(zip(x.tolist(), y.tolist()))


def draw_icon() -> Image.Image:
    size = SIZE * SCALE
    icon = Image.new("RGBA", (size, size), (22, 28, 40, 255))
    fan = fan_mask(size)
    trus = Image.merge("RGBA", [speckle(size)] * 3 + [fan])
    icon.alpha_composite(trus)

    # MRI (warm tint) fused over the left half of the fan, as in the module's blended view.
    mri = Image.new("RGBA", (size, size), (230, 140, 60, 0))
    gradient = np.tile(np.linspace(150, 0, size)[None, :], (size, 1))
    gradient[:, size // 2:] = 0
    alpha = (np.asarray(fan, dtype=float) / 255 * gradient).astype(np.uint8)
    mri.putalpha(Image.fromarray(alpha))
    icon.alpha_composite(mri)

    draw = ImageDraw.Draw(icon)
    outline = prostate_outline(size)
    draw.line(outline + [outline[0]], fill=(90, 220, 120, 255), width=5 * SCALE, joint="curve")
    target = (size * 0.60, size * 0.47)
    r = 7 * SCALE
    draw.ellipse((target[0] - r, target[1] - r, target[0] + r, target[1] + r), outline=(255, 70, 70, 255),
                 width=3 * SCALE)
    draw.line((target[0] - 2 * r, target[1], target[0] - r * 1.2, target[1]), fill=(255, 70, 70, 255),
              width=2 * SCALE)
    draw.line((target[0] + r * 1.2, target[1], target[0] + 2 * r, target[1]), fill=(255, 70, 70, 255),
              width=2 * SCALE)
    probe = (size * 0.5, size * 0.97)
    draw.ellipse((probe[0] - 9 * SCALE, probe[1] - 9 * SCALE, probe[0] + 9 * SCALE, probe[1] + 9 * SCALE),
                 fill=(200, 205, 215, 255))
    return icon.resize((SIZE, SIZE), Image.LANCZOS)


def main() -> None:
    icon = draw_icon()
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path, optimize=True)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
