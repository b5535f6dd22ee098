"""Crash anywhere and resume with nothing lost: `visplay evolve` killed for real, as a subprocess.

One uncrashed reference run, then one run killed four times in a row and resumed after each
(`tests/faults.py`): SIGKILL once questioner checkpoint-1 exists, SIGKILL once the first
chunk of questions is written, Ctrl-C during reasoner training (clean stop, exit 130, a message
saying how to resume), SIGKILL right after the reasoner stage is recorded. While one resumed
process runs, a second `visplay evolve` on the same run must be refused by the lock. The finished
run must match the reference row for row by key (questions, labels, both evaluations), log each
GRPO step once, load every model, and leave no temp file or checkpoint behind.

Both runs read a folder of images that mixes world scenes with hostile files (empty, truncated,
1x1, a 30000x30000 PNG bomb, text named .png, CMYK, 16-bit, palette + transparency, animated GIF,
EXIF-rotated, PNG bytes named .jpg), a copied preset and a copied base model: every input file
must be byte-identical afterwards. The exhaustive sweep is `scripts/kill_sweep.py`
(docs/reliability.md). Offline; about 3 minutes on 2 cores: `pytest -q tests/test_faults.py`.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visplay.config import EMBEDDED_MODELS, PRESETS_DIR
import faults
from faults import KillPoint
from visplay.worlds.scene import make_scene

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")]

WORLD_IMAGES = 10


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels: ~0.5 MB on disk, ~1 GB once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(1)
    idat = b"".join([comp.compress(row * 1000) for _ in range(side // 1000)] + [comp.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_image_folder(root: Path) -> Path:
    """World scenes plus one file of each hostile kind; the refused ones sort first, so every
    stage that takes images meets them."""
    root.mkdir(parents=True)
    scenes = [make_scene("unlabeled", i).render() for i in range(WORLD_IMAGES)]
    for i, img in enumerate(scenes):
        (root / f"w{i:02d}.png").write_bytes(_encode(img, "PNG"))
    base = scenes[0]
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    grey16 = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    frames = [make_scene("unlabeled", 100 + i).render() for i in range(3)]
    files = {
        "a_cmyk.jpg": _encode(base.convert("CMYK"), "JPEG", quality=90),
        "b_grey16.png": _encode(grey16, "PNG"),
        "c_palette_transparent.png": _encode(pal, "PNG", transparency=0),
        "d_animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "e_exif_rotated.jpg": _encode(base, "JPEG", exif=exif, quality=90),
        "f_png_named.jpg": _encode(scenes[1], "PNG"),
        "0_empty.png": b"",
        "0_truncated.jpg": _encode(scenes[2], "JPEG")[:300],
        "0_one_pixel.png": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "0_bomb.png": _bomb_png(),
        "0_text.png": b"this is not an image\n" * 10,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    assert grey16.mode == "I;16"
    return root


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Inputs (image folder, preset, base model: copies, hashed) and the uncrashed reference run."""
    root = tmp_path_factory.mktemp("faults")
    inputs = root / "inputs"
    images = hostile_image_folder(inputs / "images")
    preset = inputs / "preset.yaml"
    shutil.copyfile(PRESETS_DIR / "tiny.yaml", preset)
    model = inputs / "model"
    shutil.copytree(EMBEDDED_MODELS["tiny"], model)
    overrides = faults.fast_overrides(str(model)) + [
        f"evolve.source=folder:{images}", "evolve.min_pixels=19600", "evolve.max_pixels=19600"]
    before = digest_tree(inputs)
    timeline = faults.reference_run(root / "reference", overrides, root / "reference.log", preset=str(preset))
    return {"root": root, "inputs": inputs, "before": before, "overrides": overrides, "preset": str(preset),
            "timeline": timeline}


def test_killed_four_times_resumes_to_exactly_the_reference(setup):
    root, run = setup["root"], setup["root"] / "run"
    refused: list[tuple[int, str]] = []

    def second_evolve_on_the_same_run(proc, i):
        if i == 1:  # the first resumed process: wait until it holds the lock, then try a second one
            faults.watch(proc, run, lambda seen, now: "<locked>" in seen, timeout=300)
            refused.append(faults.second_process(run, root / "second.log"))

    points = [
        KillPoint("iter1/questioner", "checkpoint", 1),
        KillPoint("iter1/questions", "part", 1),
        KillPoint("iter1/reasoner", "checkpoint", 1, signal.SIGINT),
        KillPoint("iter1/reasoner", "done"),
    ]
    chain = faults.run_chain(run, root / "reference", points, setup["overrides"], root / "run.log",
                             setup["timeline"], between=second_evolve_on_the_same_run, preset=setup["preset"])
    log = chain.log.read_text()[-4000:]
    assert [k.landed for k in chain.kills][:3] == ["iter1/questioner", "iter1/questions", "iter1/reasoner"], log
    # right after the reasoner is recorded: in the evaluation, or (a fast machine) after it, in the report
    assert chain.kills[3].landed in ("iter1/eval", "end"), log
    assert [k.exit_code for k in chain.kills][:2] == [-9, -9] and chain.kills[3].exit_code == -9, log
    assert chain.kills[2].exit_code in faults.CLEAN_STOP_CODES, log  # Ctrl-C: a clean stop, see faults.strike
    for k in chain.kills:
        assert k.problems == [] and k.orphans == [], (k.point.label, k.problems, k.orphans)
    assert refused and refused[0][0] == 2 and "in use by another visplay process" in refused[0][1], refused
    assert chain.resumed_ok, log
    c = chain.comparison
    assert set(c.lost) == {"iter0/eval", "iter1/questions", "iter1/labels", "iter1/eval"}
    assert sum(c.lost.values()) == sum(c.duplicated.values()) == sum(c.foreign.values()) == 0, c
    assert c.problems == [], c.problems
    # the resumed processes really resumed: finished stages were skipped, the GRPO phase restarted from its checkpoint
    assert "iter0/eval: done (resumed)" in chain.log.read_text()


def test_hostile_images_were_skipped_with_reasons_and_inputs_are_untouched(setup):
    manifest = faults.read_manifest(setup["root"] / "reference")
    skipped = manifest["stages"]["iter1/questions"]["skipped_images"]
    assert skipped == {"empty_file": 1, "truncated": 1, "too_small": 1, "too_many_pixels": 1, "not_an_image": 1}
    ids = manifest["stages"]["iter1/questions"]["image_ids"]
    assert len(ids) == 6 and all(i.startswith("sha256:") for i in ids)
    # every run in this file (the reference, the killed and resumed one, the refused one) is over
    assert digest_tree(setup["inputs"]) == setup["before"]
