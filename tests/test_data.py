"""Image sources: world, folder and parquet (Vision-SR1 layout), `open_source` and `skip_seen`.

All inputs are generated in pytest's tmp dirs (tiny PNGs, parquet written with pyarrow, one with
HF datasets); each test checks ids, origins, order, skip counts, and that inputs are untouched.
Offline, a few seconds: `pytest -q tests/test_data.py`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visplay.data import (
    FolderSource,
    ImageItem,
    ImageSource,
    ParquetSource,
    WorldSource,
    image_id,
    open_source,
    skip_seen,
)
from visplay.data import sources as sources_module
from visplay.worlds.scene import WorldConfig, make_scene

SR1_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()),
        ("answer", pa.string()),
    ]
)


def png(seed: int, w: int = 12, h: int = 10) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 of its bytes (so also: no file added, moved or removed)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_sr1(path: Path, cells: list, *, row_group_size: int | None = None) -> None:
    rows = len(cells)
    table = pa.table(
        {"images": cells, "problem": [f"q{i}" for i in range(rows)], "answer": [str(i) for i in range(rows)]},
        schema=SR1_SCHEMA,
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def struct_cell(data: bytes | None, path: str | None = None) -> list[dict]:
    return [{"bytes": data, "path": path}]


# --- world --------------------------------------------------------------------------------------


def test_world_source_ids_order_and_determinism():
    cfg = WorldConfig(grid=3, max_objects=3)
    src = WorldSource(cfg, split="heldout", start=5, count=3)
    items = list(src)
    assert [i.id for i in items] == ["world/heldout/5", "world/heldout/6", "world/heldout/7"]
    assert [i.origin for i in items] == [i.id for i in items]
    assert all(i.image.mode == "RGB" and i.image.size == (84, 84) for i in items)
    want = make_scene("heldout", 6, cfg).render()
    assert items[1].image.tobytes() == want.tobytes()
    assert [i.image.tobytes() for i in src] == [i.image.tobytes() for i in items]
    assert not src.skipped and isinstance(src, ImageSource)
    big = next(iter(WorldSource(cfg, count=1, min_pixels=200 * 200)))
    assert big.image.size == (200, 200) and big.id == "world/unlabeled/0"


def test_world_source_is_endless_and_lazy():
    src = WorldSource(WorldConfig(grid=2, max_objects=2))
    first = [i.id for i in itertools.islice(src, 4)]
    assert first == [f"world/unlabeled/{n}" for n in range(4)]
    assert list(WorldSource(count=0)) == []


def test_world_source_validates():
    with pytest.raises(ValueError, match="split"):
        WorldSource(split="nope")
    with pytest.raises(ValueError, match="start"):
        WorldSource(start=-1)
    with pytest.raises(ValueError, match="min_pixels"):
        WorldSource(min_pixels=10, max_pixels=5)


# --- folder -------------------------------------------------------------------------------------


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.PNG").write_bytes(png(1))
    (root / "b" / "c.jpg").write_bytes(png(2))  # PNG bytes, .jpg name: decoded by content
    (root / "b" / "deep" / "d.WebP").write_bytes(png(3))
    (root / "b" / "copy_of_a.png").write_bytes(png(1))
    (root / "b" / "broken.gif").write_bytes(b"GIF89a garbage")
    (root / "b" / "empty.bmp").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "._a.PNG").write_bytes(b"\0\5\26\7 mac resource fork")
    (root / ".hidden" / "e.png").write_bytes(png(4))
    return root


def test_folder_source(photo_dir, caplog):
    before = tree_digest(photo_dir)
    src = FolderSource(photo_dir)
    with caplog.at_level(logging.WARNING, logger="visplay.data.sources"):
        items = list(src)
    rel = [Path(i.origin).relative_to(photo_dir).as_posix() for i in items]
    assert rel == ["a.PNG", "b/c.jpg", "b/copy_of_a.png", "b/deep/d.WebP"]
    assert items[0].id == items[2].id == image_id(png(1))  # same bytes, same id, any path
    assert [i.id for i in items] == [image_id(png(s)) for s in (1, 2, 1, 3)]
    assert all(i.image.mode == "RGB" and i.image.size == (12, 10) for i in items)
    assert src.skipped == {"not_an_image": 1, "empty_file": 1}
    assert "broken.gif" in caplog.text and "empty.bmp" in caplog.text
    assert [i.id for i in src] == [i.id for i in items] and sum(src.skipped.values()) == 2  # reset per pass
    assert tree_digest(photo_dir) == before


def test_folder_source_resizes(photo_dir):
    items = list(FolderSource(photo_dir, min_pixels=480, max_pixels=1000))
    assert all(480 <= i.image.size[0] * i.image.size[1] <= 1000 for i in items)
    items = list(FolderSource(photo_dir, max_pixels=30))
    assert all(i.image.size[0] * i.image.size[1] <= 30 for i in items)


def test_folder_source_copies_share_ids(photo_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(photo_dir, copy)
    assert [i.id for i in FolderSource(copy)] == [i.id for i in FolderSource(photo_dir)]


def test_folder_source_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found in"):
        FolderSource(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / ".x.png").write_bytes(png(0))
    with pytest.raises(ValueError, match="no images found in"):
        FolderSource(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        FolderSource(tmp_path / "missing")


def test_folder_file_vanishing_mid_run_is_skipped(photo_dir):
    src = FolderSource(photo_dir)
    (photo_dir / "b" / "c.jpg").unlink()
    assert len(list(src)) == 3 and src.skipped["missing_file"] == 1


# --- parquet ------------------------------------------------------------------------------------


@pytest.fixture
def sr1_parquet(tmp_path) -> Path:
    """Vision-SR1-47K layout, 8 rows: 2 corrupt images, 1 empty bytes, 1 text-only row."""
    cells = [struct_cell(png(i)) for i in range(8)]
    cells[2] = struct_cell(png(2)[:60])  # truncated
    cells[4] = struct_cell(b"definitely not an image")
    cells[5] = struct_cell(b"")
    cells[6] = []
    path = tmp_path / "sr1" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    write_sr1(path, cells, row_group_size=3)
    return path


def test_parquet_vision_sr1_layout(sr1_parquet, monkeypatch, caplog):
    monkeypatch.setattr(sources_module, "PARQUET_BATCH_ROWS", 2)  # batches and row groups cross
    before = tree_digest(sr1_parquet.parent)
    src = ParquetSource(sr1_parquet)
    with caplog.at_level(logging.WARNING, logger="visplay.data.sources"):
        items = list(src)
    good = [0, 1, 3, 7]
    assert [i.origin for i in items] == [f"{sr1_parquet}#row={r}" for r in good]
    assert [i.id for i in items] == [image_id(png(r)) for r in good]
    assert all(i.image.mode == "RGB" and i.image.size == (12, 10) for i in items)
    assert dict(src.skipped) == {"truncated": 1, "not_an_image": 1, "empty_file": 1, "empty_row": 1}
    for row in (2, 4, 5, 6):
        assert f"#row={row}" in caplog.text
    again = list(src)
    assert [i.id for i in again] == [i.id for i in items] and sum(src.skipped.values()) == 4
    assert tree_digest(sr1_parquet.parent) == before


def test_parquet_copies_share_ids(sr1_parquet, tmp_path):
    copy = tmp_path / "elsewhere.parquet"
    shutil.copyfile(sr1_parquet, copy)
    a, b = list(ParquetSource(sr1_parquet)), list(ParquetSource(copy))
    assert [i.id for i in a] == [i.id for i in b]
    assert b[0].origin == f"{copy}#row=0"


def test_parquet_path_valued_images(tmp_path):
    root = tmp_path / "ds"
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        (root / "imgs" / f"{i}.png").write_bytes(png(10 + i))
    struct_rows = [struct_cell(None, "imgs/0.png"), struct_cell(png(11), "imgs/does-not-matter.png"),
                   struct_cell(None, "imgs/missing.png"), struct_cell(None, None)]
    write_sr1(root / "structs.parquet", struct_rows)
    strings = pa.table({"images": [["imgs/2.png"], [str(root / "imgs" / "0.png")]]})  # relative, absolute
    pq.write_table(strings, root / "strings.parquet")
    before = tree_digest(root)
    src = ParquetSource(root)  # a directory: files in sorted order
    items = list(src)
    assert [i.origin for i in items] == [
        f"{root / 'strings.parquet'}#row=0", f"{root / 'strings.parquet'}#row=1",
        f"{root / 'structs.parquet'}#row=0", f"{root / 'structs.parquet'}#row=1",
    ]
    assert [i.id for i in items] == [image_id(png(n)) for n in (12, 10, 10, 11)]
    assert dict(src.skipped) == {"missing_file": 1, "missing_data": 1}
    assert tree_digest(root) == before


def test_parquet_single_images_and_multi_image_rows(tmp_path):
    single = tmp_path / "single.parquet"
    pq.write_table(pa.table({"image": pa.array([png(1), None, png(2)], pa.binary()), "answer": ["a", "b", "c"]}), single)
    src = ParquetSource(single, column="image")
    assert [(i.id, i.origin) for i in src] == [
        (image_id(png(1)), f"{single}#row=0"), (image_id(png(2)), f"{single}#row=2")]
    assert dict(src.skipped) == {"empty_row": 1}

    multi = tmp_path / "multi.parquet"
    write_sr1(multi, [struct_cell(png(1)) + struct_cell(b"bad") + struct_cell(png(3)), struct_cell(png(4))])
    src = ParquetSource(multi)
    assert [i.origin.split("#")[1] for i in src] == ["row=0&image=0", "row=0&image=2", "row=1"]
    assert dict(src.skipped) == {"not_an_image": 1}


def test_parquet_hf_datasets_written(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features(
        {"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
         "answer": datasets.Value("string")}
    )
    pics = [Image.open(io.BytesIO(png(s))) for s in range(3)]
    ds = datasets.Dataset.from_dict(
        {"images": [[p] for p in pics], "problem": ["a", "b", "c"], "answer": ["1", "2", "3"]}, features=feats
    )
    path = tmp_path / "hf.parquet"
    ds.to_parquet(str(path))
    items = list(ParquetSource(path))
    assert len(items) == 3 and [i.origin for i in items] == [f"{path}#row={r}" for r in range(3)]
    assert all(np.array_equal(np.asarray(i.image), np.asarray(p)) for i, p in zip(items, pics))


def test_parquet_missing_column_raises_before_yielding(sr1_parquet):
    with pytest.raises(ValueError) as info:
        ParquetSource(sr1_parquet, column="image")
    msg = str(info.value)
    assert str(sr1_parquet) in msg and "images" in msg and "problem" in msg and "answer" in msg


def test_parquet_errors(tmp_path):
    with pytest.raises(ValueError, match="no parquet files found in"):
        ParquetSource(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        ParquetSource(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        ParquetSource(bad)


def test_parquet_damaged_mid_file_skips_rest_of_that_file(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    write_sr1(root / "a.parquet", [struct_cell(png(i)) for i in range(6)], row_group_size=3)
    write_sr1(root / "b.parquet", [struct_cell(png(9))])
    meta = pq.ParquetFile(root / "a.parquet").metadata.row_group(1).column(0)
    raw = bytearray((root / "a.parquet").read_bytes())
    raw[meta.data_page_offset : meta.data_page_offset + 16] = b"\xff" * 16  # smash a page header
    (root / "a.parquet").write_bytes(bytes(raw))
    src = ParquetSource(root)
    items = list(src)
    assert src.skipped["unreadable_parquet"] == 1
    assert items[-1].id == image_id(png(9))  # the next file is still read


# --- open_source, skip_seen ---------------------------------------------------------------------


def test_open_source_specs(photo_dir, sr1_parquet):
    cfg = WorldConfig(grid=2, max_objects=1)
    world = open_source("world:heldout", world_config=cfg, count=2)
    assert isinstance(world, WorldSource) and world.split == "heldout" and world.world_config == cfg
    assert [i.id for i in world] == ["world/heldout/0", "world/heldout/1"]
    assert isinstance(open_source("world"), WorldSource)
    folder = open_source(f"folder:{photo_dir}", world_config=cfg, max_pixels=50)
    assert isinstance(folder, FolderSource) and folder.max_pixels == 50
    assert isinstance(open_source(str(photo_dir)), FolderSource)
    assert isinstance(open_source(f"parquet:{sr1_parquet}"), ParquetSource)
    assert isinstance(open_source(str(sr1_parquet)), ParquetSource)
    assert isinstance(open_source(str(sr1_parquet.parent)), ParquetSource)  # folder holding *.parquet
    assert all(isinstance(s, ImageSource) for s in (world, folder, open_source(str(sr1_parquet))))
    with pytest.raises(ValueError, match="neither an existing path"):
        open_source(str(photo_dir / "missing"))
    with pytest.raises(ValueError, match="cannot tell"):
        open_source(str(photo_dir / "a.PNG"))
    with pytest.raises(ValueError, match="names no path"):
        open_source("folder:")
    with pytest.raises(TypeError):
        open_source(str(photo_dir), column="images")


def test_skip_seen_drops_used_and_duplicate_ids(photo_dir):
    src = FolderSource(photo_dir)
    ids = [i.id for i in src]
    seen = {ids[1]}
    kept = list(skip_seen(src, seen))
    assert [i.id for i in kept] == [ids[0], ids[3]]  # ids[2] repeats ids[0]
    assert seen == {ids[1]}  # caller's set untouched
    world = skip_seen(WorldSource(WorldConfig(grid=2, max_objects=1)), {"world/unlabeled/0", "world/unlabeled/2"})
    assert [i.id for i in itertools.islice(world, 2)] == ["world/unlabeled/1", "world/unlabeled/3"]


def test_item_is_frozen():
    item = ImageItem(id="x", image=Image.new("RGB", (8, 8)), origin="o")
    with pytest.raises(AttributeError):
        item.id = "y"  # type: ignore[misc]
