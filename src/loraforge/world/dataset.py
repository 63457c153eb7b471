"""Training folders from the toy world: PNGs with kohya-style `.txt` captions, ready for `[dataset] train_data_dir`.

`write_concept_images` makes a DreamBooth instance set for a held-out concept ("a TOK on a blue background, top
left" under images of hearts); `write_scenes` makes captioned base-world images (a caption-training set, or the
regularisation images of a prior-preservation run).
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import DataError
from ..utils.files import atomic_dir
from .scene import BASE_SHAPES, HELD_OUT, Scene, caption, random_scene, render


def concept_scene(rng: random.Random, concept: str) -> Scene:
    """A random scene showing `concept` (a key of `HELD_OUT`); style concepts go on a random base shape."""
    if concept not in HELD_OUT:
        raise DataError(f"concept {concept!r} is not one of the toy world's held-out concepts ({', '.join(HELD_OUT)})")
    attribute, value = HELD_OUT[concept]
    return random_scene(rng, shapes=BASE_SHAPES, **{attribute: value})


def concept_caption(scene: Scene, concept: str, trigger: str, drop=frozenset()) -> str:
    """The scene's caption with the trigger standing for the concept: the noun for a shape, the style word for a
    fill ("a large TOK red circle on ...", where the plain caption says "a large striped red circle")."""
    attribute, _ = HELD_OUT[concept]
    if attribute == "shape":
        return caption(scene, drop=drop, shape_word=trigger)
    return caption(scene, drop=drop - {"fill"}).replace(f" {scene.fill} ", f" {trigger} ", 1)


def _write(folder: Path, items: list[tuple[Scene, str]], overwrite: bool) -> Path:
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise DataError(f"{folder} already holds files; choose an empty folder or pass overwrite")
    with atomic_dir(folder) as tmp:
        for i, (scene, text) in enumerate(items):
            render(scene).save(tmp / f"{i:04d}.png")
            (tmp / f"{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def write_concept_images(folder, concept: str, n: int = 8, *, trigger: str = "TOK", seed: int = 0,
                         overwrite: bool = False) -> Path:
    """`n` images of `concept` with captions that name it by `trigger`, in `folder` (written as a whole)."""
    rng = random.Random(f"concept-{concept}-{seed}")
    items = []
    for _ in range(n):
        scene = concept_scene(rng, concept)
        items.append((scene, concept_caption(scene, concept, trigger)))
    return _write(folder, items, overwrite)


def write_scenes(folder, n: int, *, seed: int = 0, overwrite: bool = False) -> Path:
    """`n` base-world images with their full captions, in `folder` (written as a whole)."""
    rng = random.Random(f"scenes-{seed}")
    items = []
    for _ in range(n):
        scene = random_scene(rng)
        items.append((scene, caption(scene)))
    return _write(folder, items, overwrite)
