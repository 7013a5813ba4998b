"""Image listing, row order, colour conversion and unreadable files."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dimalign.features.datasets import (
    ImageDataset,
    ImageList,
    ImageReadError,
    collate_images,
    find_images,
    list_images,
    load_rgb,
    parse_color,
    read_image_list,
    sort_key,
    to_rgb,
)
from dimalign.features.extract import extract_features
from dimalign.io.features import load_features


def save_rgb(path, colour=(10, 20, 30), size=(8, 8), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """a.jpg, b.JPG, c.jpeg, d.png, .DS_Store and an empty e.jpg."""
    folder = tmp_path / "images"
    save_rgb(folder / "a.jpg")
    save_rgb(folder / "b.JPG", fmt="JPEG")
    save_rgb(folder / "c.jpeg")
    save_rgb(folder / "d.png")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "e.jpg").write_bytes(b"")
    return folder


def test_folder_lists_images_in_order(mixed_folder):
    images = find_images(mixed_folder)
    assert images.object_ids == ("a.jpg", "b.JPG", "c.jpeg", "d.png", "e.jpg")
    assert images.paths[0] == str(mixed_folder / "a.jpg")


def test_empty_file_stops_extraction(mixed_folder, tmp_path, tiny_model):
    with pytest.raises(ValueError, match=r"e\.jpg: empty file \(0 bytes\)"):
        extract_features(mixed_folder, tmp_path / "out", tiny_model, layers=["0"], pools="gap")


def test_empty_file_skipped_and_listed(mixed_folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    result = extract_features(mixed_folder, out, tiny_model, layers=["0"], pools="gap",
                              on_error="skip")

    features, table = load_features(out)
    assert features.shape == (4, 4)
    assert table.object_ids == ("a.jpg", "b.JPG", "c.jpeg", "d.png")
    assert table.sources[3] == str(mixed_folder / "d.png")
    assert result.n_rows == 4
    with open(out / "skipped.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows == [["path", "reason"], [str(mixed_folder / "e.jpg"), "empty file (0 bytes)"]]


def test_hidden_folders_and_other_extensions_ignored(tmp_path):
    save_rgb(tmp_path / "sub" / "f.png")
    save_rgb(tmp_path / ".cache" / "g.png")
    save_rgb(tmp_path / "sub" / ".h.png")
    (tmp_path / "notes.txt").write_text("not an image")
    save_rgb(tmp_path / "scan.TIF", fmt="TIFF")

    assert find_images(tmp_path).object_ids == ("sub/f.png",)
    assert find_images(tmp_path, extensions=["tif", ".PNG"]).object_ids == ("scan.TIF", "sub/f.png")


def test_sort_key_orders_case_then_components():
    names = ["sub-2.jpg", "b.jpg", "sub/a.jpg", "B.jpg", "a.jpg", "A.jpg"]
    assert sorted(names, key=sort_key) == ["A.jpg", "a.jpg", "B.jpg", "b.jpg", "sub/a.jpg",
                                           "sub-2.jpg"]


def test_folder_order_matches_sort_key(tmp_path):
    for name in ["sub-2.jpg", "b.jpg", "sub/a.jpg", "B.jpg", "a.jpg"]:
        save_rgb(tmp_path / name)
    assert find_images(tmp_path).object_ids == ("a.jpg", "B.jpg", "b.jpg", "sub/a.jpg",
                                                "sub-2.jpg")


def test_unicode_names_normalised_to_nfc(tmp_path):
    decomposed = "cafe\u0301.png"  # e + combining acute accent, as macOS stores names
    save_rgb(tmp_path / decomposed)
    images = find_images(tmp_path)
    assert images.object_ids == ("caf\u00e9.png",)
    assert images.paths == (str(tmp_path / decomposed),)


def test_checksum_ignores_folder_location(mixed_folder, tmp_path):
    copy = shutil.copytree(mixed_folder, tmp_path / "moved")
    assert find_images(copy).checksum() == find_images(mixed_folder).checksum()
    (copy / "f.png").write_bytes((copy / "d.png").read_bytes())
    assert find_images(copy).checksum() != find_images(mixed_folder).checksum()


def test_empty_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images with extensions"):
        find_images(tmp_path)


def test_list_file_keeps_its_order(tmp_path):
    save_rgb(tmp_path / "x" / "b.png")
    save_rgb(tmp_path / "x" / "a.png")
    list_file = tmp_path / "list.txt"
    list_file.write_text("# my order\nx/b.png\n\nx/a.png\n", encoding="utf-8")

    images = list_images(list_file)
    assert images.object_ids == ("x/b.png", "x/a.png")
    assert images.paths == (str(tmp_path / "x" / "b.png"), str(tmp_path / "x" / "a.png"))


def test_list_file_rejects_one_file_spelled_twice(tmp_path):
    save_rgb(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.png\nsub/../a.png\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"line 2: 'sub/../a.png' is the file .*a.png of line 1 again"):
        read_image_list(list_file)


def test_list_file_with_byte_order_mark(tmp_path):
    save_rgb(tmp_path / "a.png")
    save_rgb(tmp_path / "b.png")
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"\xef\xbb\xbfa.png\r\nb.png\r\n")

    images = list_images(list_file)

    assert images.object_ids == ("a.png", "b.png")
    assert images.paths[0] == str(tmp_path / "a.png")


def test_non_utf8_file_name_rejected(tmp_path):
    folder = tmp_path / "images"
    save_rgb(folder / "a.png")
    Image.new("RGB", (8, 8)).save(os.fsdecode(bytes(folder) + b"/caf\xe9.png"), format="PNG")

    with pytest.raises(ValueError) as error:
        find_images(folder)

    assert f"the image path {bytes(folder) + b'/caf' + bytes([0xe9]) + b'.png'!r} is not valid UTF-8" in str(
        error.value)


def test_list_file_rejects_duplicates(tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.png\nb.png\na.png\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: 'a.png' repeats line 1"):
        read_image_list(list_file)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_modes_become_three_channel_batches(tmp_path, mode):
    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png" if mode != "CMYK" else tmp_path / f"{index}.jpg"
        Image.new(mode, (8, 8)).save(path)
        paths.append(path)
    images = find_images(tmp_path)
    dataset = ImageDataset(images, T.ToTensor())
    batch = collate_images([dataset[index] for index in range(len(dataset))])
    assert batch.failures == []
    assert batch.rows == [0, 1, 2]
    assert tuple(batch.pixels.shape) == (3, 3, 8, 8)


def test_grayscale_replicated():
    rgb = to_rgb(Image.new("L", (2, 2), 100))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (100, 100, 100)


def test_alpha_composited_on_background():
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 102))  # alpha 0.4
    on_white = to_rgb(image)
    assert on_white.getpixel((0, 0)) == (255, 255, 255)
    # 0.4 * 255 + 0.6 * 255 = 255 for red; 0.4 * 0 + 0.6 * 255 = 153 for green and blue.
    assert on_white.getpixel((1, 0)) == (255, 153, 153)
    on_black = to_rgb(image, background=(0, 0, 0))
    assert on_black.getpixel((1, 0)) == (102, 0, 0)


def test_palette_transparency_uses_background():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    rgb = to_rgb(image, background=(7, 8, 9))
    assert rgb.getpixel((0, 0)) == (7, 8, 9)
    assert rgb.getpixel((1, 0)) == (0, 255, 0)


@pytest.mark.parametrize(
    ("mode", "pixels", "key", "opaque"),
    [("RGB", [[(255, 0, 0), (0, 0, 255)]], (255, 0, 0), (0, 0, 255)),
     ("L", [[200, 50]], 200, (50, 50, 50)),
     ("I;16", [[40000, 2570]], 40000, (10, 10, 10))],
)
def test_transparent_colour_key_uses_background(tmp_path, mode, pixels, key, opaque):
    # A PNG tRNS chunk marks every pixel of one colour transparent, as browsers show it.
    dtype = np.uint16 if mode == "I;16" else np.uint8
    path = tmp_path / "keyed.png"
    Image.fromarray(np.array(pixels, dtype=dtype)).save(path, transparency=key)

    rgb = load_rgb(path, background=(7, 8, 9))

    assert rgb.getpixel((0, 0)) == (7, 8, 9)
    assert rgb.getpixel((1, 0)) == opaque


def test_sixteen_bit_gray_scaled_to_eight(tmp_path):
    values = np.array([[0, 2570, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    rgb = load_rgb(path)
    assert [rgb.getpixel((column, 0)) for column in range(3)] == [(0, 0, 0), (10, 10, 10),
                                                                 (255, 255, 255)]


def test_float_image_rejected(tmp_path):
    path = tmp_path / "scaled.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)

    with pytest.raises(ImageReadError) as error:
        load_rgb(path)

    assert error.value.path == str(path)
    assert error.value.reason.startswith("32-bit float image (mode F) with no fixed value range")
    with pytest.raises(ValueError, match="mode F"):
        to_rgb(Image.open(path))


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    assert load_rgb(path).size == (2, 4)
    assert load_rgb(path, exif_transpose=False).size == (4, 2)


def test_truncated_and_fake_images_rejected(tmp_path):
    good = save_rgb(tmp_path / "good.jpg", size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    fake = tmp_path / "fake.png"
    fake.write_text("this is text")

    with pytest.raises(ImageReadError, match="cannot decode image"):
        load_rgb(truncated)
    with pytest.raises(ImageReadError, match="not an image file"):
        load_rgb(fake)
    with pytest.raises(ImageReadError, match="file not found"):
        load_rgb(tmp_path / "missing.png")


def test_image_over_pixel_limit_says_what_to_do(tmp_path, monkeypatch):
    path = save_rgb(tmp_path / "panorama.png", size=(64, 32))
    # Pillow raises DecompressionBombError above twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)

    with pytest.raises(ImageReadError) as raised:
        load_rgb(path)

    assert raised.value.path == str(path)
    assert "2048 pixels" in raised.value.reason
    assert "downscale the image" in raised.value.reason
    assert "PIL.Image.MAX_IMAGE_PIXELS" in raised.value.reason


def test_heic_image_names_its_format(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100))

    with pytest.raises(ImageReadError, match=r"HEIC/HEIF .* convert it to JPEG or PNG"):
        load_rgb(path)


def test_truncated_image_fails_despite_global_flag(tmp_path, monkeypatch):
    from PIL import ImageFile

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(ImageReadError, match="cannot decode image"):
        load_rgb(truncated)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_dataset_skips_elongated_image(tmp_path):
    # A PNG of 20000 x 4 pixels (under 1 KB) becomes 1,280,000 x 256 pixels when its
    # shorter side is resized to 256: gigabytes for one image.
    Image.new("L", (20000, 4), 128).save(tmp_path / "strip.png")
    Image.new("L", (300, 200), 128).save(tmp_path / "photo.png")

    def reject_strip(image):
        assert max(image.size) < 20000, "the strip reached the model's transform"
        return T.ToTensor()(image)

    dataset = ImageDataset(find_images(tmp_path), reject_strip)
    batch = collate_images([dataset[index] for index in range(len(dataset))])
    assert batch.rows == [0]
    [(row, reason)] = batch.failures
    assert row == 1
    assert reason.startswith("20000 x 4 pixels, an aspect ratio of 5000:1")
    assert "crop or pad the image" in reason


def test_dataset_reports_failures_instead_of_raising(mixed_folder):
    images = find_images(mixed_folder)
    dataset = ImageDataset(images, T.ToTensor())
    batch = collate_images([dataset[index] for index in range(len(dataset))])
    assert batch.rows == [0, 1, 2, 3]
    assert batch.failures == [(4, "empty file (0 bytes)")]
    assert isinstance(batch.pixels, torch.Tensor)


@pytest.mark.parametrize("text, expected", [
    ("white", (255, 255, 255)),
    ("#102030", (16, 32, 48)),
    ("1,2,3", (1, 2, 3)),
    ((4, 5, 6), (4, 5, 6)),
])
def test_parse_color(text, expected):
    assert parse_color(text) == expected


@pytest.mark.parametrize("text", ["whiteish", "1,2", "300,0,0"])
def test_parse_color_rejects_invalid(text):
    with pytest.raises(ValueError, match="invalid background colour"):
        parse_color(text)


@pytest.mark.parametrize("text", ["#ffffff80", "#fff0", "1,2,3,128"])
def test_parse_color_rejects_alpha(text):
    with pytest.raises(ValueError) as error:
        parse_color(text)

    assert str(error.value) == (
        f"invalid background colour {text!r}: the colour under transparent pixels must be opaque, "
        "so give it without alpha, such as a name, #rrggbb or r,g,b"
    )


def test_broken_link_is_reported(tmp_path, caplog):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "real.png")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with caplog.at_level("WARNING", logger="dimalign.features.datasets"):
        assert find_images(tmp_path).object_ids == ("real.png",)
    assert "dangling.jpg is a link to a missing file" in caplog.text


def test_image_source_that_is_no_folder_or_list(tmp_path):
    from PIL import Image

    from dimalign.features.datasets import list_images

    Image.new("RGB", (4, 4)).save(tmp_path / "one.jpg")
    with pytest.raises(ValueError, match="one.jpg is an image, not a folder of images or a list file"):
        list_images(tmp_path / "one.jpg")
    with pytest.raises(FileNotFoundError, match="nosuchdir not found: pass a folder of images"):
        list_images(tmp_path / "nosuchdir")
    (tmp_path / "binary.lst").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match="binary.lst is not a text list of image paths"):
        list_images(tmp_path / "binary.lst")


def test_linked_folder_left_out_with_warning(tmp_path, caplog):
    save_rgb(tmp_path / "elsewhere" / "cat.png")
    save_rgb(tmp_path / "images" / "dog.png")
    (tmp_path / "images" / "cats").symlink_to(tmp_path / "elsewhere")

    with caplog.at_level("WARNING", logger="dimalign.features.datasets"):
        assert find_images(tmp_path / "images").object_ids == ("dog.png",)

    assert f"left out the linked folder {tmp_path / 'images' / 'cats'} (-> {tmp_path / 'elsewhere'})" in caplog.text


def test_image_list_checks_its_rows():
    from dimalign.features.datasets import ImageList

    with pytest.raises(ValueError, match="ImageList has 2 object ids but 1 paths"):
        ImageList(("a", "b"), ("/x/a.png",), "x")
    with pytest.raises(ValueError, match=r"ImageList object id 'a' appears twice \(rows 0 and 2\)"):
        ImageList(("a", "b", "a"), ("/x/a.png", "/x/b.png", "/y/a.png"), "x")


def wide_gamut_profile():
    """Return Pillow's sRGB ICC profile with the red, green and blue colorants of Display P3 (D50 XYZ)."""
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    colorants = {b"rXYZ": (0.5151, 0.2412, -0.0011), b"gXYZ": (0.2920, 0.6922, 0.0419),
                 b"bXYZ": (0.1571, 0.0666, 0.7841)}
    for entry in range(struct.unpack(">I", data[128:132])[0]):
        signature, offset, _ = struct.unpack(">4sII", data[132 + 12 * entry:144 + 12 * entry])
        if signature in colorants:
            data[offset + 8:offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in colorants[signature]))
    data[84:100] = bytes(16)  # A profile ID of zeros means "not computed".
    return bytes(data)


def test_icc_profile_ignored(tmp_path):
    import io

    from PIL import ImageCms

    profile = wide_gamut_profile()
    path = tmp_path / "p3.png"
    Image.new("RGB", (4, 4), (200, 100, 50)).save(path, icc_profile=profile)
    managed = ImageCms.profileToProfile(Image.open(path), ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                        ImageCms.createProfile("sRGB"))

    # Applying the profile, as a browser does, changes the colour; extraction keeps the stored values.
    assert managed.getpixel((1, 1)) != (200, 100, 50)
    assert load_rgb(path).getpixel((1, 1)) == (200, 100, 50)


def test_image_list_repr_abbreviates():
    """A notebook shows the repr, which lists the first and last three rows of a long list."""
    names = tuple(f"img{row:02d}.png" for row in range(10))
    images = ImageList(names, tuple(f"/photos/{name}" for name in names), "/photos")
    assert repr(images) == (
        "ImageList(n_images=10, object_ids=('img00.png', 'img01.png', 'img02.png', ..., "
        "'img07.png', 'img08.png', 'img09.png'), paths=('/photos/img00.png', '/photos/img01.png', "
        "'/photos/img02.png', ..., '/photos/img07.png', '/photos/img08.png', '/photos/img09.png'), "
        "root='/photos')"
    )
