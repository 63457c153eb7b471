"""The toy world: captioned 64 × 64 images of one shape on a plain background, drawn deterministically from a seed.

A scene is a shape (`SHAPES`), its colour and the background colour (`COLOURS`, never the same), a position
(`POSITIONS`), a size (`SIZES`) and a fill style (`FILLS`). The base model learns the *base* world: the first six
shapes, filled. The *held-out* concepts (`HELD_OUT`: a new shape, a pattern, a style) are never in its training
data, so a LoRA that makes them appear has taught the model something new, and the judge (`world.judge`) can tell.

Captions read like "a large red circle on a blue background, top left"; `caption(scene, drop=...)` leaves parts out
so the model also answers short prompts ("a circle on a green background").
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 64  # image side, pixels
_SS = 4  # supersampling factor: shapes are drawn at 256 px and downsampled, so edges are anti-aliased

BASE_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
SHAPES = BASE_SHAPES + ("heart",)
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = tuple(COLOURS)
POSITIONS = {  # centre of the shape, in pixels
    "top left": (18, 18),
    "top right": (46, 18),
    "bottom left": (18, 46),
    "bottom right": (46, 46),
    "center": (32, 32),
}
POSITION_NAMES = tuple(POSITIONS)
SIZES = {"small": 9.0, "large": 14.0}  # radius of the shape's bounding circle, pixels
SIZE_NAMES = tuple(SIZES)
BASE_FILLS = ("filled",)
FILLS = BASE_FILLS + ("outlined", "striped")

# The concepts the base model never sees: (attribute, value).
HELD_OUT = {"heart": ("shape", "heart"), "striped": ("fill", "striped"), "outlined": ("fill", "outlined")}

# The attributes a judge reads, with their classes, in a fixed order (the judge's heads).
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "background": COLOUR_NAMES,
    "position": POSITION_NAMES,
    "size": SIZE_NAMES,
    "fill": FILLS,
}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str
    fill: str = "filled"
    dx: int = 0  # jitter of the centre, pixels
    dy: int = 0

    def labels(self) -> dict[str, int]:
        """The class index of each attribute, in `ATTRIBUTES` order."""
        return {name: classes.index(getattr(self, name)) for name, classes in ATTRIBUTES.items()}


def random_scene(rng: random.Random, *, shapes=BASE_SHAPES, fills=BASE_FILLS, **fixed) -> Scene:
    """A scene with every attribute drawn from `rng` unless given in `fixed`; colour and background always differ."""
    colour = fixed.pop("colour", None) or rng.choice(COLOUR_NAMES)
    background = fixed.pop("background", None)
    if background is None or background == colour:
        background = rng.choice([c for c in COLOUR_NAMES if c != colour])
    return Scene(
        shape=fixed.pop("shape", None) or rng.choice(shapes),
        colour=colour,
        background=background,
        position=fixed.pop("position", None) or rng.choice(POSITION_NAMES),
        size=fixed.pop("size", None) or rng.choice(SIZE_NAMES),
        fill=fixed.pop("fill", None) or rng.choice(fills),
        dx=rng.randint(-2, 2),
        dy=rng.randint(-2, 2),
        **fixed,
    )


def caption(scene: Scene, *, drop: frozenset[str] = frozenset(), shape_word: str | None = None) -> str:
    """"a large red circle on a blue background, top left"; parts named in `drop` (size, colour, fill, background,
    position) are left out; `shape_word` replaces the shape's name (a trigger such as "TOK")."""
    words = ["a"]
    if "size" not in drop:
        words.append(scene.size)
    if scene.fill != "filled" and "fill" not in drop:
        words.append(scene.fill)
    if "colour" not in drop:
        words.append(scene.colour)
    words.append(shape_word or scene.shape)
    text = " ".join(words)
    if "background" not in drop:
        text += f" on a {scene.background} background"
    if "position" not in drop:
        text += f", {scene.position}"
    return text


def random_caption(scene: Scene, rng: random.Random, p_drop: float = 0.3) -> str:
    """The caption with each optional part left out with probability `p_drop` (training captions)."""
    drop = frozenset(p for p in ("size", "colour", "background", "position") if rng.random() < p_drop)
    return caption(scene, drop=drop)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    def ring(n, radius, phase):
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)]

    if shape == "square":
        s = r * 0.8
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "cross":
        a, b = r * 0.33, r
        return [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy - a), (cx + b, cy - a), (cx + b, cy + a), (cx + a, cy + a),
                (cx + a, cy + b), (cx - a, cy + b), (cx - a, cy + a), (cx - b, cy + a), (cx - b, cy - a), (cx - a, cy - a)]
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.42, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 17, cy - y * r / 17 - r * 0.05))
        return pts
    return None  # circle


def _mask(scene: Scene) -> Image.Image:
    """The shape's coverage at `_SS` × resolution (mode L, 255 inside)."""
    side = SIZE * _SS
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    x, y = POSITIONS[scene.position]
    cx, cy, r = (x + scene.dx) * _SS, (y + scene.dy) * _SS, SIZES[scene.size] * _SS
    poly = _polygon(scene.shape, cx, cy, r)
    if poly is None:
        d.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=255)
    else:
        d.polygon(poly, fill=255)
    if scene.fill == "outlined":
        width = 2 * _SS + 1  # an odd MinFilter size; about a 1-pixel line after downsampling
        m = ImageChops.subtract(m, m.filter(ImageFilter.MinFilter(width)))
    elif scene.fill == "striped":
        stripes = Image.new("L", (side, side), 0)
        ds = ImageDraw.Draw(stripes)
        period = 4 * _SS
        for k in range(-side, side, period):  # diagonal stripes, half the period wide
            ds.polygon([(k, 0), (k + period // 2, 0), (k + period // 2 + side, side), (k + side, side)], fill=255)
        m = ImageChops.multiply(m, stripes)
    return m


def render(scene: Scene) -> Image.Image:
    """The scene as a 64 × 64 RGB image (deterministic: same scene, same pixels)."""
    side = SIZE * _SS
    img = Image.new("RGB", (side, side), COLOURS[scene.background])
    img.paste(Image.new("RGB", (side, side), COLOURS[scene.colour]), mask=_mask(scene))
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def scenes(seed: int, n: int, **kw) -> list[Scene]:
    """`n` random scenes from `seed` (the same list on every machine); `kw` as in `random_scene`."""
    rng = random.Random(seed)
    return [random_scene(rng, **dict(kw)) for _ in range(n)]


def with_attribute(scene: Scene, **changes) -> Scene:
    return replace(scene, **changes)
