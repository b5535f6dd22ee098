"""Image sources and decoding: every stage gets its images through here.

`images` turns one untrusted image (bytes, path, HF `{"bytes", "path"}` dict, PIL image) into a
clean RGB picture or an `ImageError` with a countable `.reason`; `sources` streams `ImageItem`s
from the procedural world, a folder or parquet files. Test: `pytest tests/test_data.py
tests/test_hostile_images.py`.
"""

from visplay.data.images import ImageError, check_pixel_range, decode_image, image_id, resize_to_pixel_range
from visplay.data.sources import (
    FolderSource,
    ImageItem,
    ImageSource,
    ParquetSource,
    WorldSource,
    open_source,
    skip_seen,
)

__all__ = [
    "FolderSource",
    "ImageError",
    "ImageItem",
    "ImageSource",
    "ParquetSource",
    "WorldSource",
    "check_pixel_range",
    "decode_image",
    "image_id",
    "open_source",
    "resize_to_pixel_range",
    "skip_seen",
]
