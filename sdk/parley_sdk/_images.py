"""Images before they are encrypted: metadata stripped, a thumbnail, a blurhash.

A photo's EXIF can hold where it was taken (GPS), when, and with which
device; the recipients of a chat need none of it and the sender rarely knows
it is there. So every image the SDK sends is decoded and encoded again from
its pixels alone (orientation applied first, colours converted to sRGB when
it carries an ICC profile), which drops EXIF, XMP, IPTC, comments and
profiles whatever the format hides them in. JPEG, PNG and WebP keep their
format; GIF (which has no EXIF) is sent as it is; other formats Pillow reads
(TIFF, BMP...) become PNG. Encoding is deterministic, so an interrupted
upload re-derives the same bytes from the same file.

Pure computation (Pillow, blurhash-python): no network, no store.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import blurhash
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = [
    "THUMBNAIL_MAX_BYTES",
    "THUMBNAIL_MAX_SIDE",
    "PreparedImage",
    "prepare_image",
]

THUMBNAIL_MAX_SIDE = 320
"""Pixels of a thumbnail's longer side, at most."""
THUMBNAIL_MAX_BYTES = 60 * 1024
"""A thumbnail's JPEG bytes, at most: encrypted (29 bytes more) it stays under
the media service's 64 KiB limit for CONTENT_CLASS_THUMBNAIL."""
# Tried in turn until the JPEG fits; the last ones shrink the picture too.
_THUMBNAIL_TRIES = ((320, 75), (320, 60), (320, 45), (240, 45), (160, 40), (96, 35))
_BLURHASH_SIDE = 64
_REENCODED = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# Image.info entries that are pixels' meaning, not metadata: kept.
_KEPT_INFO = ("transparency", "duration", "loop", "background")


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image as it is sent: ``data`` without metadata, and what describes it."""

    data: bytes = field(repr=False)
    content_type: str
    extension: str
    """The file name extension ``data`` calls for, with its dot."""
    width: int
    height: int
    blurhash: str
    thumbnail: bytes | None = field(repr=False)
    """A JPEG of at most THUMBNAIL_MAX_BYTES, or None when none fits."""
    thumbnail_width: int = 0
    thumbnail_height: int = 0


def prepare_image(data: bytes) -> PreparedImage | None:
    """The image ready to send, or None when Pillow cannot read ``data`` as one.

    ValueError for an image too large to decode safely (a decompression bomb).
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as error:
        raise ValueError(f"the image is too large to process: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None
    with image:
        source_format = image.format or ""
        upright: Image.Image
        animated = bool(getattr(image, "is_animated", False))
        if source_format == "GIF":
            # GIF has no place for EXIF or GPS; re-encoding would cost colours
            # and frames for nothing.
            upright, encoded, content_type, extension = image, data, "image/gif", ".gif"
        elif animated and source_format in ("PNG", "WEBP"):
            upright = image
            encoded = _encode_animation(image, source_format)
            content_type, extension = _REENCODED[source_format], f".{source_format.lower()}"
        else:
            upright = _in_srgb(ImageOps.exif_transpose(image))
            target = source_format if source_format in _REENCODED else "PNG"
            encoded = _encode_still(upright, target)
            content_type = _REENCODED.get(target, "image/png")
            extension = ".jpg" if content_type == "image/jpeg" else f".{target.lower()}"
        width, height = upright.size
        preview = _rgb(upright)
        thumbnail, thumb_size = _thumbnail(preview)
        return PreparedImage(
            data=encoded,
            content_type=content_type,
            extension=extension,
            width=width,
            height=height,
            blurhash=_blurhash(preview),
            thumbnail=thumbnail,
            thumbnail_width=thumb_size[0],
            thumbnail_height=thumb_size[1],
        )


def _clean(image: Image.Image) -> Image.Image:
    """A copy carrying pixels only: encoders read metadata (comments, EXIF,
    ICC, XMP) from ``info`` too, so it keeps only what the pixels need."""
    copy = image.copy()
    copy.info = {key: image.info[key] for key in _KEPT_INFO if key in image.info}
    return copy


def _in_srgb(image: Image.Image) -> Image.Image:
    """The pixels converted to sRGB when a colour profile came with them, since
    the profile itself is dropped with the rest of the metadata."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA"):
        return image
    try:
        converted = ImageCms.profileToProfile(
            image, io.BytesIO(profile), ImageCms.createProfile("sRGB"), outputMode=image.mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unreadable profile: keep the pixels as they are
    return converted if converted is not None else image


def _encode_still(image: Image.Image, target: str) -> bytes:
    clean = _clean(image)
    out = io.BytesIO()
    if target in ("JPEG", "MPO"):
        if clean.mode not in ("RGB", "L"):
            clean = clean.convert("RGB")
        clean.save(out, format="JPEG", quality=90)
    elif target == "WEBP":
        clean.save(out, format="WEBP", quality=90)
    else:
        clean.save(out, format="PNG")
    return out.getvalue()


def _encode_animation(image: Image.Image, target: str) -> bytes:
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(_clean(image))
    image.seek(0)
    out = io.BytesIO()
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    for key in ("duration", "loop"):
        if key in image.info:
            options[key] = image.info[key]
    frames[0].save(out, format=target, **options)
    return out.getvalue()


def _rgb(image: Image.Image) -> Image.Image:
    """RGB pixels for previews; transparency over white, as chats show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _thumbnail(image: Image.Image) -> tuple[bytes | None, tuple[int, int]]:
    for side, quality in _THUMBNAIL_TRIES:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        small.info = {}
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=quality, optimize=True)
        if out.tell() <= THUMBNAIL_MAX_BYTES:
            return out.getvalue(), small.size
    return None, (0, 0)


def _blurhash(image: Image.Image) -> str:
    small = image.copy()
    small.thumbnail((_BLURHASH_SIDE, _BLURHASH_SIDE), Image.Resampling.BILINEAR)
    width, height = small.size
    x_components, y_components = (4, 3) if width >= height else (3, 4)
    with warnings.catch_warnings():
        # blurhash-python reads pixels with Image.getdata, deprecated since
        # Pillow 12 (removed in 14, which sdk/pyproject.toml excludes).
        warnings.simplefilter("ignore", DeprecationWarning)
        return str(blurhash.encode(small, x_components, y_components))
