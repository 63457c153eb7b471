"""Draw the sample images that loraforge ships (8 pictures of one toy robot, with captions).

They are made by code so their licence is ours; run again to regenerate `src/loraforge/assets/demo/`.
Each image varies the background, light, position, size and pose of the same robot, as a DreamBooth set should.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SCENES = [
    # (width, height, sky top, sky bottom, ground, caption of the place)
    (128, 128, (120, 170, 235), (200, 225, 250), (70, 140, 60), "on a green lawn under a blue sky"),
    (128, 128, (250, 180, 120), (255, 225, 170), (190, 150, 100), "in the desert at sunset"),
    (160, 128, (40, 40, 70), (90, 80, 120), (60, 60, 60), "on a street at night"),
    (128, 160, (230, 230, 230), (250, 250, 250), (170, 120, 80), "on a wooden table in a white room"),
    (128, 128, (150, 200, 255), (230, 240, 255), (235, 235, 245), "in the snow"),
    (160, 128, (90, 150, 90), (160, 200, 140), (100, 80, 50), "in a forest"),
    (128, 160, (255, 240, 200), (255, 250, 235), (200, 60, 60), "on a red carpet"),
    (128, 128, (60, 120, 170), (120, 180, 210), (220, 200, 150), "on a beach"),
]


def draw_robot(d: ImageDraw.ImageDraw, cx: float, base: float, s: float, tilt: int, light: float) -> None:
    def shade(c):
        return tuple(max(0, min(255, int(v * light))) for v in c)

    body, head, accent = shade((200, 60, 40)), shade((220, 80, 60)), shade((250, 210, 60))
    # legs
    for dx in (-0.35, 0.2):
        d.rectangle([cx + dx * s, base - 0.45 * s, cx + (dx + 0.15) * s, base], fill=shade((80, 80, 90)))
    # body
    d.rounded_rectangle([cx - 0.5 * s, base - 1.3 * s, cx + 0.5 * s, base - 0.4 * s], radius=0.12 * s, fill=body)
    d.ellipse([cx - 0.15 * s, base - 1.0 * s, cx + 0.15 * s, base - 0.7 * s], fill=accent)
    # arms, one raised by the pose
    d.rectangle([cx - 0.72 * s, base - 1.2 * s, cx - 0.52 * s, base - 0.6 * s], fill=body)
    ay = -0.5 * s * tilt
    d.rectangle([cx + 0.52 * s, base - 1.2 * s + ay, cx + 0.72 * s, base - 0.6 * s + ay], fill=body)
    # head, eyes, antenna
    d.rounded_rectangle([cx - 0.38 * s, base - 1.9 * s, cx + 0.38 * s, base - 1.35 * s], radius=0.1 * s, fill=head)
    for ex in (-0.2, 0.08):
        d.ellipse([cx + ex * s, base - 1.75 * s, cx + (ex + 0.12) * s, base - 1.6 * s], fill=(20, 230, 255))
    d.line([cx, base - 1.9 * s, cx, base - 2.15 * s], fill=shade((90, 90, 90)), width=max(1, int(0.05 * s)))
    d.ellipse([cx - 0.07 * s, base - 2.25 * s, cx + 0.07 * s, base - 2.1 * s], fill=accent)


def make(i: int, scene, rng: random.Random) -> Image.Image:
    w, h, top, bottom, ground, _ = scene
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    for y in range(horizon):
        t = y / max(1, horizon - 1)
        d.line([0, y, w, y], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    d.rectangle([0, horizon, w, h], fill=ground)
    for _ in range(40):  # texture on the ground
        x, y = rng.uniform(0, w), rng.uniform(horizon, h)
        c = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in ground)
        d.ellipse([x, y, x + 3, y + 2], fill=c)
    s = min(w, h) * rng.uniform(0.22, 0.32)
    cx = w * rng.uniform(0.35, 0.65)
    base = min(h - 2, horizon + (h - horizon) * rng.uniform(0.4, 0.9))
    draw_robot(d, cx, base, s, tilt=i % 2, light=rng.uniform(0.75, 1.15))
    return img.filter(ImageFilter.SMOOTH)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    for i, scene in enumerate(SCENES):
        img = make(i, scene, rng)
        img.save(out / f"robot_{i:02d}.png", optimize=True)
        (out / f"robot_{i:02d}.txt").write_text(f"a photo of sks robot {scene[5]}\n")
    print(f"wrote {len(SCENES)} images to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "src/loraforge/assets/demo")
