"""The images of a `POST /v1/classify` request to an image classifier: base64 (or data URLs) decoded and checked.

Each image is decoded fully here, before it reaches the worker, so a bad one is a 400 naming its index
(`images[2]`) instead of a failed forward pass that would fail every request sharing the round.  The body
is already within the server's size limit (app.py), so decoding is bounded too; PIL's own limit on pixel
count (its decompression-bomb check) refuses an image that would expand past it.  The request log keeps
a description of each image (size, mode, a hash), not its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from tuneforge.serve.errors import ApiError


@dataclass
class RequestImage:
    image: object  # a PIL image, RGB, loaded
    description: str  # what the request log records


def decoded(index: int, value: str) -> RequestImage:
    from PIL import Image, UnidentifiedImageError

    where = f"images[{index}]"
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: not base64 (send the image file's bytes base64-encoded, or a data URL)",
                       param=where, code="invalid_image") from None
    if not data:
        raise ApiError(400, f"{where}: an empty image", param=where, code="invalid_image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            picture = image.convert("RGB")
            size, mode = image.size, image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{where}: not an image PIL can read ({type(exc).__name__}: {exc})", param=where,
                       code="invalid_image") from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    return RequestImage(picture, f"image {size[0]}x{size[1]} {mode}, {len(data)} bytes, sha256 {digest}")


def request_images(values: list[str] | None) -> list[RequestImage]:
    if not values:
        raise ApiError(400, "this server serves an image classifier: send the images as "
                       '{"images": ["<base64 of the file>", ...]}', param="images", code="no_images")
    return [decoded(index, value) for index, value in enumerate(values)]
