"""decode_image: formats, modes, EXIF, alpha, 16-bit, bombs, broken files, array and PIL inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pnasnet.data.decode import DEFAULT_BACKGROUND, ImageDecodeError, decode_image

RED, GREEN, BLUE = (220, 30, 40), (30, 200, 60), (20, 40, 210)


def quadrants(w: int = 40, h: int = 30) -> np.ndarray:
    """Top-left red, top-right green, bottom blue: orientation is visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :] = BLUE
    return a


def close(px, colour, tol: int) -> bool:
    return bool(np.all(np.abs(np.asarray(px, int) - np.asarray(colour, int)) <= tol))


@pytest.mark.parametrize(
    "fmt,ext,tol",
    [("JPEG", "jpg", 12), ("PNG", "png", 0), ("WEBP", "webp", 0), ("GIF", "gif", 0), ("BMP", "bmp", 0), ("TIFF", "tif", 0)],
)
def test_formats_from_path_bytes_and_file(tmp_path, fmt, ext, tol):
    a = quadrants()
    path = tmp_path / f"img.{ext}"
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(a).save(path, fmt, **kw)
    for src in (path, str(path), path.read_bytes(), open(path, "rb")):
        out = decode_image(src)
        assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
        if fmt == "GIF":  # palette: exact colours survive quantisation of 3 colours
            assert close(out[5, 5], RED, 0) and close(out[5, 35], GREEN, 0) and close(out[25, 20], BLUE, 0)
        else:
            assert np.abs(out.astype(int) - a.astype(int))[3:12, 3:17].max() <= tol
            assert close(out[5, 35], GREEN, tol) and close(out[25, 20], BLUE, tol)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as im:
        assert im.n_frames == 3
    assert close(decode_image(path)[4, 4], RED, 0)


def test_exif_orientation_6_rotates(tmp_path):
    a = quadrants(40, 30)  # stored landscape, red at top-left
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(path)
    assert out.shape == (40, 30, 3)  # displayed portrait
    # 90 degrees clockwise: the stored top-left (red) goes to the top-right; blue (bottom) to the left
    assert close(out[3, 26], RED, 12)
    assert close(out[36, 26], GREEN, 12)
    assert close(out[20, 3], BLUE, 12)
    raw = decode_image(path, exif_transpose=False)
    assert raw.shape == (30, 40, 3) and close(raw[3, 3], RED, 12)


def test_mode_L_and_1(tmp_path):
    g = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (5, 1))
    out = decode_image(Image.fromarray(g, "L"))
    assert out.shape == (5, 64, 3) and np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    path = tmp_path / "b.png"
    bits.save(path)
    out = decode_image(path)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


def test_mode_LA_composited_on_white(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 0  # black
    la[0, 0, 1] = 255  # opaque black
    la[0, 1, 1] = 0  # fully transparent -> background
    la[0, 2, 1] = 128  # half -> about mid grey
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out = decode_image(path)
    assert DEFAULT_BACKGROUND == (255, 255, 255)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [127, 127, 127]  # round(255 * 127 / 255)


def test_P_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    p.putpixel((1, 1), 1)
    p.info["transparency"] = 0  # index 0 (red) is transparent
    path = tmp_path / "p.png"
    p.save(path, transparency=0)
    out = decode_image(path)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent red -> background, not red
    assert out[1, 1].tolist() == [0, 0, 255]
    grey = decode_image(path, background=(128, 128, 128))
    assert grey[0, 0].tolist() == [128, 128, 128]


def test_RGBA_composited(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., :3] = (200, 100, 0)
    a[0, 0, 3] = 255
    a[0, 1, 3] = 0
    a[0, 2, 3] = 51  # 20 %
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    out = decode_image(path)
    assert out[0, 0].tolist() == [200, 100, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [244, 224, 204]  # 0.2 * c + 0.8 * 255
    assert np.array_equal(decode_image(a), out)  # HxWx4 array: same compositing
    assert decode_image(a, background=(0, 0, 0))[0, 1].tolist() == [0, 0, 0]


def test_CMYK_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, "JPEG", quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = decode_image(path)
    assert out.shape == (16, 16, 3) and close(out[8, 8], (255, 0, 0), 8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_gradient_scaled_not_clipped(tmp_path, mode):
    v = np.linspace(0, 65535, 300).astype(np.uint16).reshape(1, 300).repeat(3, axis=0)
    img = Image.frombytes(mode, (300, 3), v.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    assert img.mode == mode
    sources: list = [img]
    if mode == "I;16":  # Pillow writes 16-bit grey PNGs from I;16 and reads them back as I;16
        path = tmp_path / "g16.png"
        img.save(path)
        sources.append(path)
    for src in sources:
        out = decode_image(src)[0, :, 0].astype(int)
        assert out[0] == 0 and out[-1] == 255
        assert np.all(np.diff(out) >= 0)  # monotone
        assert len(np.unique(out)) > 200  # spread over the range, not clipped at 255
        assert abs(out[150] - 128) <= 1
    arr = decode_image(v)  # uint16 numpy array
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255 and np.all(np.diff(arr[0, :, 0].astype(int)) >= 0)


def test_mode_I_and_F():
    i32 = Image.fromarray(np.array([[0, 65535]], np.int32), "I")
    assert decode_image(i32)[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert decode_image(f)[0, :, 0].tolist() == [0, 128, 255]


def test_numpy_inputs():
    g = np.array([[0, 255]], np.uint8)
    assert decode_image(g).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    fl = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    assert decode_image(fl).tolist() == [[[0, 128, 255]]]
    a = quadrants()
    assert np.array_equal(decode_image(a), a)
    with pytest.raises(ImageDecodeError, match=r"\[0, 1\]"):
        decode_image(np.full((2, 2, 3), 2.0))
    with pytest.raises(ImageDecodeError, match="dtype"):
        decode_image(np.zeros((2, 2, 3), np.complex64))
    with pytest.raises(ImageDecodeError, match="HxW"):
        decode_image(np.zeros((2, 2, 5), np.uint8))


def test_pil_input_and_type_error():
    a = quadrants()
    assert np.array_equal(decode_image(Image.fromarray(a)), a)
    with pytest.raises(TypeError):
        decode_image(12345)


def test_bomb_guard_names_file(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(path, max_pixels=5000)
    assert "big.png" in str(ei.value) and "max_pixels" in str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert decode_image(path, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        decode_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file(tmp_path, fmt, ext):
    rng = np.random.default_rng(0)
    full = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(path)
    assert "cut." + ext in str(ei.value) and "truncated" in str(ei.value)


def test_non_image_empty_and_missing(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageDecodeError, match=r"notes\.txt.*not an image"):
        decode_image(txt)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg.*cannot read"):
        decode_image(tmp_path / "missing.jpg")


def test_corrupt_png_body(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(quadrants()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid : mid + 20] = b"\x00" * 20  # damage the compressed data / CRC
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match=r"bad\.png"):
        decode_image(path)
