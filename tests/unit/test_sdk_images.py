"""Images before upload (parley_sdk._images, parley_sdk._file_sources): metadata
stripped (a generated JPEG carrying EXIF GPS tags), orientation honoured,
thumbnails within their limit, blurhash, and how a file's type is decided."""

from __future__ import annotations

import io
import os
from pathlib import Path

import blurhash
import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from parley_sdk._file_sources import prepare_file, safe_file_name
from parley_sdk._images import THUMBNAIL_MAX_BYTES, THUMBNAIL_MAX_SIDE, prepare_image

GPS = {
    ExifTags.GPS.GPSLatitudeRef: "N",
    ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
    ExifTags.GPS.GPSLongitudeRef: "E",
    ExifTags.GPS.GPSLongitude: (13.0, 24.0, 1.0),
}


def photo(
    size: tuple[int, int] = (400, 200), *, orientation: int = 1, noisy: bool = False
) -> bytes:
    """A JPEG as a phone writes it: EXIF with the camera, the place and the orientation."""
    if noisy:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (20, 120, 200))
        for x in range(size[0] // 2):
            image.putpixel((x, 0), (255, 0, 0))  # marks the top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "SpyPhone"
    exif[ExifTags.Base.DateTime] = "2031:01:02 03:04:05"
    exif[ExifTags.IFD.GPSInfo] = GPS
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, comment=b"taken at home")
    return out.getvalue()


def test_the_photo_really_carries_gps_before() -> None:
    data = photo()
    gps = Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[ExifTags.GPS.GPSLatitude] == (52.0, 31.0, 12.0)
    assert b"SpyPhone" in data and b"taken at home" in data


def test_exif_gps_and_comments_are_stripped() -> None:
    prepared = prepare_image(photo())
    assert prepared is not None
    assert prepared.content_type == "image/jpeg" and prepared.extension == ".jpg"
    cleaned = Image.open(io.BytesIO(prepared.data))
    assert dict(cleaned.getexif()) == {}
    assert cleaned.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}
    for secret in (b"SpyPhone", b"2031:01:02", b"taken at home", b"Exif\x00\x00"):
        assert secret not in prepared.data
    assert "exif" not in cleaned.info and "comment" not in cleaned.info
    # The thumbnail is made from the cleaned pixels and carries nothing either.
    assert prepared.thumbnail is not None
    assert b"SpyPhone" not in prepared.thumbnail and b"Exif" not in prepared.thumbnail


def test_orientation_is_applied_before_the_tag_is_dropped() -> None:
    # Orientation 6: the sensor's 400x200 picture is shown rotated, 200x400.
    prepared = prepare_image(photo((400, 200), orientation=6))
    assert prepared is not None
    assert (prepared.width, prepared.height) == (200, 400)
    assert Image.open(io.BytesIO(prepared.data)).size == (200, 400)
    assert prepared.thumbnail_width < prepared.thumbnail_height


def test_a_thumbnail_fits_its_limit_even_for_a_noisy_photo() -> None:
    prepared = prepare_image(photo((1600, 1200), noisy=True))
    assert prepared is not None
    assert prepared.thumbnail is not None
    assert len(prepared.thumbnail) <= THUMBNAIL_MAX_BYTES
    thumb = Image.open(io.BytesIO(prepared.thumbnail))
    assert thumb.format == "JPEG"
    assert max(thumb.size) <= THUMBNAIL_MAX_SIDE
    assert thumb.size == (prepared.thumbnail_width, prepared.thumbnail_height)


def test_blurhash_is_valid_and_follows_the_aspect() -> None:
    wide = prepare_image(photo((400, 200)))
    tall = prepare_image(photo((200, 400)))
    assert wide is not None and tall is not None
    assert blurhash.is_valid_blurhash(wide.blurhash)
    assert blurhash.is_valid_blurhash(tall.blurhash)
    assert wide.blurhash != tall.blurhash


def test_re_encoding_is_deterministic_so_a_resumed_upload_finds_the_same_bytes() -> None:
    data = photo((640, 480), noisy=True)
    one, two = prepare_image(data), prepare_image(data)
    assert one is not None and two is not None
    assert one.data == two.data and one.thumbnail == two.thumbnail


def test_png_keeps_its_format_and_transparency_and_loses_its_text_chunks() -> None:
    image = Image.new("RGBA", (64, 32), (255, 0, 0, 0))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Alice at 52.5N 13.4E")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    prepared = prepare_image(out.getvalue())
    assert prepared is not None
    assert prepared.content_type == "image/png"
    assert b"Alice" not in prepared.data
    assert Image.open(io.BytesIO(prepared.data)).mode == "RGBA"


def test_a_colour_profile_is_converted_not_carried() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, format="JPEG", icc_profile=srgb)
    assert "icc_profile" in Image.open(io.BytesIO(out.getvalue())).info
    prepared = prepare_image(out.getvalue())
    assert prepared is not None
    cleaned = Image.open(io.BytesIO(prepared.data))
    assert "icc_profile" not in cleaned.info
    red, green, blue = cleaned.convert("RGB").getpixel((16, 16))  # type: ignore[misc]
    assert red > 150 and green < 80 and blue < 80


def test_gif_is_sent_as_it_is_and_other_formats_become_png() -> None:
    gif = io.BytesIO()
    Image.new("P", (20, 10)).save(gif, format="GIF")
    prepared = prepare_image(gif.getvalue())
    assert prepared is not None
    assert (prepared.data, prepared.content_type) == (gif.getvalue(), "image/gif")

    tiff = io.BytesIO()
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyPhone"
    Image.new("RGB", (20, 10)).save(tiff, format="TIFF", exif=exif)
    assert b"SpyPhone" in tiff.getvalue()
    converted = prepare_image(tiff.getvalue())
    assert converted is not None
    assert (converted.content_type, converted.extension) == ("image/png", ".png")
    assert b"SpyPhone" not in converted.data


def test_not_an_image() -> None:
    assert prepare_image(b"%PDF-1.7 not a picture") is None


# -- what a file is ----------------------------------------------------------------------


def test_a_photo_given_as_bare_bytes_is_still_cleaned() -> None:
    prepared = prepare_file(photo(), content_type=None, file_name=None)
    assert prepared.image is not None
    assert prepared.content_type == "image/jpeg"
    assert b"SpyPhone" not in prepared.read_at(0, prepared.plaintext_size)


def test_an_explicit_non_image_type_sends_the_file_untouched() -> None:
    data = photo()
    prepared = prepare_file(data, content_type="application/octet-stream", file_name="x.jpg")
    assert prepared.image is None
    assert prepared.read_at(0, prepared.plaintext_size) == data
    assert prepared.content_type == "application/octet-stream"


def test_a_path_gets_its_name_and_a_type_guessed_from_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(b"%PDF-1.7 " + os.urandom(1000))
    prepared = prepare_file(notes, content_type=None, file_name=None)
    try:
        assert (prepared.file_name, prepared.content_type) == ("notes.pdf", "application/pdf")
        assert prepared.read_at(0, 9) == b"%PDF-1.7 "
        assert prepared.identity.path == str(notes.resolve())
        assert prepared.identity.size == notes.stat().st_size
    finally:
        prepared.close()
    picture = tmp_path / "scan.tiff"
    Image.new("RGB", (8, 8)).save(picture, format="TIFF")
    converted = prepare_file(picture, content_type=None, file_name=None)
    assert (converted.file_name, converted.content_type) == ("scan.png", "image/png")
    unknown = prepare_file(tmp_path / "notes.pdf", content_type=None, file_name="blob")
    unknown.close()
    assert unknown.content_type == "application/octet-stream"


def test_missing_paths_and_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        prepare_file(tmp_path / "nope", content_type=None, file_name=None)
    with pytest.raises(ValueError, match="regular file"):
        prepare_file(tmp_path, content_type=None, file_name=None)


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\a\\photo.jpg", "photo.jpg"),
        ("bad\x00name\n.txt", "bad_name_.txt"),
        ("..", ""),
        ("x" * 300, "x" * 255),
    ],
)
def test_file_names_lose_directories_and_control_characters(given: str, safe: str) -> None:
    assert safe_file_name(given) == safe
