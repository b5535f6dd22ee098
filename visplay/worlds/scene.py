"""Procedural scenes: coloured shapes on a grid, deterministic from (split, index).

Each grid cell is exactly one merged Qwen2.5-VL vision token (28 px = 2x2 patches of 14 px), so
"what is in cell c3" is a question about one visual token: perception is easy by construction and
the interesting errors happen in reasoning. Test: `pytest tests/test_world.py`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
ROWS = "abcdefgh"
CELL_PX = 28

#: Attribute combinations never drawn outside the "compositional" split (a compositional hold-out).
HELD_OUT_COMBOS = frozenset({("purple", "triangle"), ("green", "circle")})

#: Seed spaces: scenes of different splits never coincide.
SPLITS = ("train", "unlabeled", "heldout", "compositional")


@dataclass(frozen=True)
class Obj:
    row: int
    col: int
    colour: str
    shape: str
    size: str

    @property
    def cell(self) -> str:
        """Cell name: row letter (a = top) then column number (1 = left), e.g. ``c3``."""
        return f"{ROWS[self.row]}{self.col + 1}"


@dataclass(frozen=True)
class WorldConfig:
    """Scene parameters. ``grid`` cells per side; objects per scene in [min_objects, max_objects]."""

    grid: int = 5
    min_objects: int = 1
    max_objects: int = 8
    noise: float = 4.0  # std of per-pixel Gaussian noise, 0 = clean
    cell_marks: bool = True  # grey bars on each cell's top (row) and left (column) edge

    def __post_init__(self) -> None:
        if not 2 <= self.grid <= len(ROWS):
            raise ValueError(f"world.grid must be in [2, {len(ROWS)}], got {self.grid}")
        if not 0 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(
                f"world objects: need 0 <= min_objects ({self.min_objects}) <= max_objects "
                f"({self.max_objects}) <= grid² ({self.grid * self.grid})"
            )
        if self.noise < 0:
            raise ValueError(f"world.noise must be >= 0, got {self.noise}")

    @property
    def image_px(self) -> int:
        return self.grid * CELL_PX


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    grid: int
    objects: tuple[Obj, ...]
    noise: float = 0.0
    style_seed: int = 0
    cell_marks: bool = True

    @property
    def level(self) -> int:
        """The scene's difficulty level: its number of objects (the ladder's axis)."""
        return len(self.objects)

    def at(self, cell: str) -> Obj | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def render(self) -> Image.Image:
        return render(self)

    def describe(self) -> str:
        """Ground-truth description, row-major."""
        return "; ".join(f"{o.cell} {o.size} {o.colour} {o.shape}" for o in self.objects) or "empty"


def _rng(split: str, index: int, salt: str = "") -> random.Random:
    digest = hashlib.sha256(f"{split}:{index}:{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def make_scene(split: str, index: int, cfg: WorldConfig = WorldConfig()) -> Scene:
    """The scene of ``split`` number ``index``: same inputs, same scene, on every machine."""
    if split not in SPLITS:
        raise ValueError(f"unknown world split {split!r}; choose one of {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = _rng(split, index)
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    cells = rng.sample(range(cfg.grid * cfg.grid), n)
    objs = []
    for c in sorted(cells):
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if split == "compositional" or (colour, shape) not in HELD_OUT_COMBOS:
                break
        objs.append(Obj(c // cfg.grid, c % cfg.grid, colour, shape, rng.choice(SIZES)))
    if split == "compositional" and objs and not any((o.colour, o.shape) in HELD_OUT_COMBOS for o in objs):
        # Every compositional scene shows at least one never-seen combination.
        o = objs[rng.randrange(len(objs))]
        colour, shape = rng.choice(sorted(HELD_OUT_COMBOS))
        objs[objs.index(o)] = Obj(o.row, o.col, colour, shape, o.size)
    return Scene(split, index, cfg.grid, tuple(objs), cfg.noise, rng.randrange(2**31), cfg.cell_marks)


BAR_PX = 3


def _draw_position_bars(draw: ImageDraw.ImageDraw, grid: int) -> None:
    """Mark every cell with its row (grey bar along the top edge) and column (grey bar down the left
    edge), so the token of the cell a question names is findable by content. Drawn over the objects:
    a large object must not hide where it is. Grey never looks like an object colour."""
    for r in range(grid):
        for c in range(grid):
            x, y = c * CELL_PX, r * CELL_PX
            row_grey, col_grey = (20 + 180 * i // max(1, grid - 1) for i in (r, c))
            draw.rectangle((x, y, x + CELL_PX - 1, y + BAR_PX - 1), fill=(row_grey,) * 3)
            draw.rectangle((x, y + BAR_PX, x + BAR_PX - 1, y + CELL_PX - 1), fill=(col_grey,) * 3)


def render(scene: Scene) -> Image.Image:
    rng = random.Random(scene.style_seed)
    px = scene.grid * CELL_PX
    bg = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (px, px), bg)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        r = 7 if o.size == "small" else 12
        cx = o.col * CELL_PX + CELL_PX // 2 + rng.randint(-1, 1)
        cy = o.row * CELL_PX + CELL_PX // 2 + rng.randint(-1, 1)
        colour = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[o.colour])
        box = (cx - r, cy - r, cx + r, cy + r)
        if o.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif o.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    if scene.cell_marks:
        _draw_position_bars(draw, scene.grid)
    if scene.noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr += np.random.default_rng(scene.style_seed).normal(0, scene.noise, arr.shape)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return img
