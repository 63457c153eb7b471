"""The toy world's scene generator: the same seed gives the same scenes and pixels on every run, the colours never
blend into the background, captions say what is drawn (and leave out what they are told to), and the held-out
concepts never come out of the defaults the base model is trained with."""

from __future__ import annotations

import random

import numpy as np

from loraforge.world.scene import (BASE_FILLS, BASE_SHAPES, COLOURS, FILLS, HELD_OUT, POSITIONS, SHAPES, SIZE, Scene,
                                   caption, random_caption, random_scene, render, scenes)


def pixels(scene: Scene) -> np.ndarray:
    return np.asarray(render(scene), dtype=np.int16)


def coverage(scene: Scene) -> np.ndarray:
    """How much of each pixel is the shape's colour (0: background, 1: colour; edges in between)."""
    fg, bg = np.array(COLOURS[scene.colour]), np.array(COLOURS[scene.background])
    return ((pixels(scene) - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))


def shape_mask(scene: Scene) -> np.ndarray:
    """Pixels nearer the shape's colour than the background's."""
    return coverage(scene) > 0.5


def test_same_seed_same_scenes_and_pixels():
    a, b = scenes(7, 50, shapes=SHAPES, fills=FILLS), scenes(7, 50, shapes=SHAPES, fills=FILLS)
    assert a == b
    assert scenes(8, 50) != scenes(7, 50)
    for s, t in zip(a[:10], b[:10]):
        img = render(s)
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
        assert img.tobytes() == render(t).tobytes()


def test_colour_never_equals_background():
    assert all(s.colour != s.background for s in scenes(3, 3000))
    rng = random.Random(0)
    # asked for the same colour on both, the background is redrawn
    for _ in range(50):
        s = random_scene(rng, colour="red", background="red")
        assert s.colour == "red" and s.background != "red"
    assert random_scene(rng, colour="red", background="blue").background == "blue"


def test_render_draws_the_scene():
    s = Scene("circle", "red", "blue", "top left", "large")
    px = pixels(s)
    assert tuple(px[0, SIZE - 1]) == COLOURS["blue"]  # a far corner is background
    x, y = POSITIONS["top left"]
    assert tuple(px[y, x]) == COLOURS["red"]  # the centre of a filled shape is its colour
    # the shape sits where its position says (centre of its pixels within a pixel of the named centre)
    for name, (x, y) in POSITIONS.items():
        ys, xs = np.nonzero(shape_mask(Scene("square", "white", "black", name, "small")))
        assert abs(xs.mean() - x) < 1 and abs(ys.mean() - y) < 1, name
    ys, xs = np.nonzero(shape_mask(Scene("square", "white", "black", "center", "small", dx=2, dy=-2)))
    assert abs(xs.mean() - 34) < 1 and abs(ys.mean() - 30) < 1  # moved by its jitter
    # large covers more than small; outlined and striped cover less than filled, and differently
    area = {f: coverage(Scene("square", "yellow", "purple", "center", "large", f)).sum() for f in FILLS}
    assert coverage(Scene("square", "yellow", "purple", "center", "small")).sum() < 0.6 * area["filled"]
    assert 0.08 * area["filled"] < area["outlined"] < 0.3 * area["filled"]  # a line about 1 px wide
    assert 0.3 * area["filled"] < area["striped"] < 0.7 * area["filled"]  # stripes half the period wide
    # the heart is its own shape
    assert (shape_mask(Scene("heart", "green", "white", "center", "large"))
            != shape_mask(Scene("circle", "green", "white", "center", "large"))).sum() > 40


def test_captions():
    s = Scene("circle", "red", "blue", "top left", "large")
    assert caption(s) == "a large red circle on a blue background, top left"
    assert caption(s, drop=frozenset({"size", "colour"})) == "a circle on a blue background, top left"
    assert caption(s, drop=frozenset({"background", "position"})) == "a large red circle"
    assert caption(s, shape_word="TOK") == "a large red TOK on a blue background, top left"
    striped = Scene("heart", "green", "white", "center", "small", "striped")
    assert caption(striped) == "a small striped green heart on a white background, center"
    assert caption(striped, drop=frozenset({"fill"})) == "a small green heart on a white background, center"
    rng = random.Random(0)
    drawn = {random_caption(s, rng, p_drop=0.5) for _ in range(200)}
    assert caption(s) in drawn and "a circle" in drawn  # nothing dropped, and everything optional dropped
    assert all(" circle" in c for c in drawn)  # the shape is never dropped
    assert {random_caption(s, rng, p_drop=0.0) for _ in range(20)} == {caption(s)}


def test_held_out_concepts_never_come_from_the_defaults():
    base = scenes(0, 3000)
    assert {s.shape for s in base} == set(BASE_SHAPES) and {s.fill for s in base} == set(BASE_FILLS)
    for attr, value in HELD_OUT.values():
        assert all(getattr(s, attr) != value for s in base)
    # asked for, they do come out
    every = scenes(0, 3000, shapes=SHAPES, fills=FILLS)
    assert {s.shape for s in every} == set(SHAPES) and {s.fill for s in every} == set(FILLS)
