"""/classify preprocessing without a server: work bounds, 16-bit PNG, EXIF rotation, timm equality."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from m2pt_deploy.serving.images import MAX_RESIZED_PIXELS, InputSpec, decode_image, input_spec
from m2pt_deploy.serving.protocol import ProtocolError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def spec(height: int = 32, width: int = 32, channels: int = 3, **kwargs) -> InputSpec:
    mean, std = (MEAN, STD) if channels == 3 else ((0.5,), (0.25,))
    return InputSpec("pixel_values", channels, height, width, mean, std, **kwargs)


def encode(image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0):
    from PIL import Image

    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


# Run in a fresh interpreter: its peak RSS is then this decode's, not the test session's.
_MEASURE = """
import json, resource, sys, time
from m2pt_deploy.serving.images import InputSpec, decode_image
from m2pt_deploy.serving.protocol import ProtocolError
spec = InputSpec("x", 3, 32, 32, [0.5] * 3, [0.5] * 3)
out = {"torch": "torch" in sys.modules or "timm" in sys.modules}
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        decode_image(data, spec)
        status, message = 200, ""
    except ProtocolError as e:
        status, message = e.status, e.message
    out[path] = {"status": status, "message": message, "s": time.perf_counter() - start,
                 "rss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}
print(json.dumps(out))
"""


def test_strips_that_resize_into_gigabytes_are_refused_from_the_header(tmp_path):
    from PIL import Image

    # Before the bounds: 1 x 100,000 took 1 s and 612 MiB, 1 x 1,000,000 took 18 s and 5.8 GiB.
    paths = []
    for n in (100_000, 1_000_000):
        paths.append(tmp_path / f"1x{n}.png")
        paths[-1].write_bytes(encode(Image.new("RGB", (1, n), (120, 30, 200)), optimize=True))
    assert max(p.stat().st_size for p in paths) < 4_000
    run = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, paths)], capture_output=True,
                         text=True, timeout=60, check=True)
    result = json.loads(run.stdout)
    assert result.pop("torch") is False, "the server's image path must not import torch or timm"
    for path, r in result.items():
        assert r["status"] == 413 and "sides more than 64 times apart" in r["message"], (path, r)
        assert r["s"] < 1.0 and r["rss_mib"] < 100, (path, r)


def test_resized_pixels_are_bounded_for_large_inputs():
    from PIL import Image

    strip = encode(Image.new("RGB", (64, 1), (1, 2, 3)))  # at the aspect limit: fine for 32 x 32
    assert decode_image(strip, spec()).shape == (1, 3, 32, 32)
    with pytest.raises(ProtocolError) as e:  # 1137 x 72768 before the crop
        decode_image(strip, spec(1024, 1024))
    assert e.value.status == 413
    assert e.value.message == (f"image is 64x1; resizing it for the 1024x1024 input makes 82737216 pixels, "
                               f"at most {MAX_RESIZED_PIXELS} are accepted")


def test_16_bit_png_is_scaled_not_clipped():
    from PIL import Image

    values = np.array([[0, 128, 129, 257, 32896], [40000, 65278, 65406, 65407, 65535]], np.uint16)
    image = Image.fromarray(np.tile(values, (4, 4)))  # 20 x 8
    assert image.mode == "I;16"
    data = encode(image)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    want = np.round(values.astype(np.float64) / 257)  # 8-bit levels, 65535 → 255
    assert want.tolist() == [[0, 0, 1, 1, 128], [156, 254, 254, 255, 255]]
    for channels in (1, 3):
        got = decode_image(data, spec(8, 20, channels, crop_pct=1.0))  # no resize, no crop
        levels = got[0] * np.asarray(spec(channels=channels).std) + np.asarray(spec(channels=channels).mean)
        np.testing.assert_allclose(levels * 255, np.broadcast_to(np.tile(want, (4, 4)), levels.shape),
                                   atol=1e-3)


def test_exif_orientation_6_jpeg_is_rotated_upright():
    from PIL import Image

    raw = Image.new("RGB", (64, 32), (0, 0, 255))
    raw.paste((255, 0, 0), (0, 0, 32, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90° clockwise: the stored left edge is the top
    data = encode(raw, "JPEG", exif=exif, quality=95)
    got = decode_image(data, spec(64, 32, crop_pct=1.0))  # a 32 wide x 64 high input: no resize
    red = got[0, 0] * STD[0] + MEAN[0]
    assert red[:28].min() > 0.9 and red[36:].max() < 0.1
    # exactly the stored pixels turned upright, then the usual preprocessing
    upright = Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(got, decode_image(encode(upright), spec(64, 32, crop_pct=1.0)))


def _timm(data: bytes, s: InputSpec):
    from timm.data import create_transform

    transform = create_transform((s.channels, s.height, s.width), is_training=False,
                                 mean=tuple(s.mean.ravel().tolist()), std=tuple(s.std.ravel().tolist()),
                                 interpolation=s.interpolation, crop_pct=s.crop_pct)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return transform(image.convert("RGB" if s.channels == 3 else "L")).numpy()[None]


@pytest.mark.parametrize("kwargs", [
    {},
    {"height": 224, "width": 224},
    {"height": 48, "width": 32},
    {"height": 32, "width": 56},
    {"height": 384, "width": 384, "crop_pct": 1.0},
    {"interpolation": "bilinear", "crop_pct": 0.875},
    {"crop_pct": 1.15},  # smaller than the input: torchvision pads with zeros
    {"channels": 1},
], ids=["32", "224", "48x32", "32x56", "384-crop1", "bilinear", "pad", "grey"])
def test_preprocessing_equals_timms_eval_transform(kwargs):
    pytest.importorskip("timm", reason="the reference is timm's own transform")
    s = spec(**kwargs)
    images = [encode(noise(40, 48)), encode(noise(300, 200, seed=1), "JPEG"), encode(noise(17, 91, seed=2)),
              encode(noise(64, 64, seed=3)), encode(noise(33, 32, "L", seed=4)), encode(noise(35, 35, seed=5))]
    for data in images:
        got = decode_image(data, s)
        want = _timm(data, s)
        assert got.shape == want.shape == (1, s.channels, s.height, s.width)
        np.testing.assert_array_equal(got, want)


def test_default_metadata_is_what_training_and_verification_use():
    """No crop_pct / interpolation in the export metadata: the project's ViT data config."""
    pytest.importorskip("timm", reason="the reference is timm's own transform")
    from m2pt_deploy.inputs.preprocess import image_transform
    from tests.tiny import TINY

    c, h, w = TINY.input_size
    s = input_spec({"m2pt_deploy.input": {"name": "pixel_values", "channels": c, "height": h, "width": w,
                                          "mean": list(TINY.mean), "std": list(TINY.std)}})
    assert s is not None
    transform = image_transform(TINY, train=False)
    from PIL import Image

    for data in (encode(noise(40, 48)), encode(noise(300, 200, seed=1), "JPEG")):
        with Image.open(io.BytesIO(data)) as image:
            want = transform(image.convert("RGB")).numpy()[None]
        np.testing.assert_array_equal(decode_image(data, s), want)


@pytest.mark.parametrize(("entry", "crop_pct", "interpolation"), [
    ({}, 0.9, "bicubic"),
    ({"crop_pct": 1.0, "interpolation": "bilinear"}, 1.0, "bilinear"),
    ({"crop_pct": None}, 0.875, "bicubic"),  # timm's own default for an architecture without a config
])
def test_input_spec_reads_the_crop_and_interpolation(entry, crop_pct, interpolation):
    base = {"name": "x", "channels": 3, "height": 32, "width": 32, "mean": list(MEAN), "std": list(STD)}
    s = input_spec({"m2pt_deploy.input": {**base, **entry}})
    assert s is not None and (s.crop_pct, s.interpolation) == (crop_pct, interpolation)
    assert input_spec({"m2pt_deploy.input": {**base, "interpolation": "cubic"}}) is None
    assert input_spec({"m2pt_deploy.input": {**base, "crop_pct": -0.9}}) is None
