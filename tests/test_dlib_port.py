"""The dlib ResNet-29 port (issue 21, items 2 and 4).

Without shared data: face-api files made here (a manifest + .bin of the real layout, random
values) test the reader (dequantisation, HWIO -> OIHW, hashes, truncation, missing / extra /
misshaped tensors), the layer arithmetic (smallest input 103) and the down-sampling blocks.

With ``../shared/data`` (marker ``shared_data``): the real face-api weights against the
descriptors dlib itself computed on 91 face chips of the wild photos
(``tests/fixtures/dlib_resnet29_descriptors.json``, made by ``bench/dlib_fixture.py make`` in
a scratch venv with dlib); the chips are rebuilt here from the photos without dlib.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, WILD, needs

from fernoise.backbones import dlib_resnet29 as dr
from fernoise.errors import FernoiseError

FACEAPI = DATA / "faceapi"
FIXTURE = Path(__file__).parent / "fixtures" / "dlib_resnet29_descriptors.json"


# --------------------------------------------------------------------------------------------
# face-api files made here


def write_faceapi(
    folder: Path,
    tensors: dict[str, np.ndarray],
    quantised: dict[str, tuple[np.ndarray, float, float]],
    shapes: dict[str, list[int]] | None = None,
) -> dict[str, str]:
    """A TF.js manifest + .bin: ``tensors`` as float32, ``quantised`` as (uint8 q, scale, min);
    in the order of ``expected_tensors``, then any others. Returns the two files' sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(dr.DlibResNet29.expected_tensors())
    names = [n for n in order if n in tensors or n in quantised]
    names += [n for n in list(tensors) + list(quantised) if n not in names]
    weights, blob = [], bytearray()
    for n in names:
        if n in quantised:
            q, scale, vmin = quantised[n]
            shape = (shapes or {}).get(n, list(q.shape))
            weights.append(
                {
                    "name": n,
                    "shape": shape,
                    "dtype": "float32",
                    "quantization": {"dtype": "uint8", "scale": scale, "min": vmin},
                }
            )
            blob += q.astype(np.uint8).tobytes()
        else:
            v = tensors[n]
            weights.append(
                {"name": n, "shape": (shapes or {}).get(n, list(v.shape)), "dtype": "float32"}
            )
            blob += v.astype("<f4").tobytes()
    (folder / dr.FACEAPI_BIN).write_bytes(bytes(blob))
    (folder / dr.FACEAPI_MANIFEST).write_text(
        json.dumps([{"paths": [dr.FACEAPI_BIN], "weights": weights}])
    )
    return {
        p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
        for p in (dr.FACEAPI_BIN, dr.FACEAPI_MANIFEST)
    }


def random_faceapi(seed: int = 0):
    """face-api's 117 tensors: the conv64 filters float32 (as in the real file), all others
    uint8-quantised, with per-tensor scale/min; returns (float32, quantised, dequantised)."""
    rng = np.random.default_rng(seed)
    floats, quant, real = {}, {}, {}
    for name, shape in dr.DlibResNet29.expected_tensors().items():
        if name.startswith("conv64") and name.endswith("filters"):
            v = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            floats[name] = real[name] = v
        else:
            q = rng.integers(0, 256, size=shape, dtype=np.uint8)
            scale = float(rng.uniform(1e-4, 1e-2)) if not name.endswith("scale/weights") else 0.004
            vmin = -scale * 128 if not name.endswith("scale/weights") else 0.5
            quant[name] = (q, scale, vmin)
            real[name] = (q.astype(np.float64) * scale + vmin).astype(np.float32)
    return floats, quant, real


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faceapi")
    floats, quant, real = random_faceapi()
    hashes = write_faceapi(folder, floats, quant)
    return folder, hashes, floats, quant, real


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------------------------
# the reader and the layout


def test_expected_tensors_are_the_real_manifest_names():
    shapes = dr.DlibResNet29.expected_tensors()
    assert len(shapes) == 117
    assert shapes["conv32_down/conv/filters"] == (7, 7, 3, 32)
    assert shapes["conv256_down_out/conv2/conv/filters"] == (3, 3, 256, 256)
    assert shapes["fc"] == (256, 128)
    net = dr.DlibResNet29()
    assert (
        sum(p.numel() for p in net.parameters())
        == 5_614_592
        == sum(int(np.prod(s)) for s in shapes.values())
    )


def test_dequantise_and_hwio_to_oihw(fake):
    folder, hashes, floats, quant, real = fake
    tensors = dr.read_faceapi(folder, sha256=hashes)
    assert set(tensors) == set(real)
    for name, value in real.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(
            tensors[name], value
        )  # q * scale + min, and the float32 ones as stored
    q, scale, vmin = quant["conv32_1/conv1/conv/filters"]
    assert tensors["conv32_1/conv1/conv/filters"][1, 2, 3, 4] == np.float32(
        q[1, 2, 3, 4] * scale + vmin
    )

    net = dr.DlibResNet29.from_faceapi(folder, sha256=hashes)
    hwio = real["conv32_down/conv/filters"]  # (7, 7, 3, 32)
    w = net.conv32_down.conv.weight.detach().numpy()  # (32, 3, 7, 7)
    assert w.shape == (32, 3, 7, 7)
    assert w[5, 2, 1, 6] == hwio[1, 6, 2, 5]  # OIHW[o, i, h, w] == HWIO[h, w, i, o]
    np.testing.assert_array_equal(w, hwio.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(
        net.conv64_1.conv2.conv.weight.detach().numpy(),
        floats["conv64_1/conv2/conv/filters"].transpose(3, 2, 0, 1),
    )
    np.testing.assert_array_equal(
        net.conv128_1.conv1.conv.bias.detach().numpy(), real["conv128_1/conv1/conv/bias"]
    )
    np.testing.assert_array_equal(
        net.conv128_1.conv1.scale.weight.detach().numpy(), real["conv128_1/conv1/scale/weights"]
    )
    np.testing.assert_array_equal(
        net.conv128_1.conv1.scale.bias.detach().numpy(), real["conv128_1/conv1/scale/biases"]
    )
    np.testing.assert_array_equal(net.fc.weight.detach().numpy(), real["fc"].T)


def test_stem_is_tensorflow_valid_conv_then_affine(fake):
    """The stem against a direct numpy TF conv2d (HWIO, stride 2, 'valid') + bias + scale."""
    folder, hashes, _, _, real = fake
    net = dr.DlibResNet29.from_faceapi(folder, sha256=hashes)
    x = np.random.default_rng(1).standard_normal((1, 21, 19, 3)).astype(np.float32)  # NHWC
    f, b = real["conv32_down/conv/filters"], real["conv32_down/conv/bias"]
    oh, ow = (21 - 7) // 2 + 1, (19 - 7) // 2 + 1
    ref = np.zeros((oh, ow, 32))
    for i in range(oh):
        for j in range(ow):
            patch = x[0, 2 * i : 2 * i + 7, 2 * j : 2 * j + 7, :].astype(np.float64)
            ref[i, j] = np.einsum("hwc,hwco->o", patch, f.astype(np.float64))
    ref = (ref + b) * real["conv32_down/scale/weights"] + real["conv32_down/scale/biases"]
    with torch.no_grad():
        got = net.conv32_down(torch.from_numpy(x).permute(0, 3, 1, 2))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_residual_down_adds_like_dlib():
    """Odd side: conv and pool agree. Even side: the conv branch gets a zero last row and
    column; the shortcut gets zero channels after its own (dlib's add_prev)."""
    blk = dr.ResidualDown(2, 4)
    with torch.no_grad():
        for p in blk.parameters():
            p.zero_()
        blk.conv2.scale.bias.fill_(10.0)  # conv branch == 10 where it exists
    x = torch.rand(1, 2, 8, 8)
    with torch.no_grad():
        out = blk(x)
    pool = F.avg_pool2d(x, 2, 2)  # (1, 2, 4, 4); conv: (8 - 3) // 2 + 1 = 3
    assert out.shape == (1, 4, 4, 4)
    torch.testing.assert_close(out[:, :2, :3, :3], pool[:, :, :3, :3] + 10)
    torch.testing.assert_close(out[:, 2:, :3, :3], torch.full((1, 2, 3, 3), 10.0))
    torch.testing.assert_close(out[:, :2, 3, :], pool[:, :, 3, :])  # last row: shortcut only
    torch.testing.assert_close(out[:, :2, :, 3], pool[:, :, :, 3])
    assert out[:, 2:, 3, :].abs().max() == 0 and out[:, 2:, :, 3].abs().max() == 0
    with torch.no_grad():
        odd = blk(torch.rand(1, 2, 9, 9))
    assert odd.shape == (1, 4, 4, 4)


def test_affine_and_convs_are_learnable():
    net = dr.DlibResNet29()
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "conv64_down.conv1.scale.weight" in names and "conv64_down.conv1.scale.bias" in names
    assert len(names) == 117
    net(torch.randn(2, 3, 112, 112)).pow(2).sum().backward()
    assert net.conv32_1.conv1.scale.weight.grad.abs().sum() > 0
    assert net.conv256_down_out.conv2.scale.bias.grad.abs().sum() > 0


def test_normalize_is_dlibs():
    x = torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert dr.DlibResNet29.normalize(x).abs().max() < 1e-6
    y = dr.DlibResNet29.normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    torch.testing.assert_close(y.flatten(), (255 - torch.tensor(dr.MEAN_RGB)) / 256)


# --------------------------------------------------------------------------------------------
# sizes


def test_smallest_input_size_is_103():
    assert dr.MIN_INPUT_SIZE == 103
    assert [dr.feature_map_size(s) for s in (102, 103, 112, 150, 160)] == [0, 1, 1, 2, 2]
    net = dr.DlibResNet29().eval()
    with torch.no_grad():
        assert net.feature_map(torch.zeros(1, 3, 103, 103)).shape == (1, 256, 1, 1)
        assert net.feature_map(torch.zeros(1, 3, 150, 150)).shape == (1, 256, 2, 2)
        assert net.features(torch.zeros(2, 3, 112, 130)).shape == (2, 256)
        assert net(torch.zeros(2, 3, 150, 150)).shape == (2, 128)
    for shape in ((1, 3, 102, 102), (1, 3, 150, 102), (1, 3, 48, 48)):
        with pytest.raises(FernoiseError) as e:
            net(torch.zeros(shape))
        h, w = shape[2:]
        assert "at least 103x103 px" in one_line(
            e
        ) and f"got {h if h == w else f'{h}x{w}'};" in str(e.value)
    with pytest.raises(FernoiseError, match="103") as e:
        dr.check_input_size(96, flag="--image-size")
    assert e.value.one_line().startswith("--image-size: ")
    dr.check_input_size(103)


def test_102_fails_in_torch_itself(monkeypatch):
    """The arithmetic is the network's: without the check, 102 breaks inside torch, 103 not."""
    monkeypatch.setattr(dr, "check_input_size", lambda *a, **k: None)
    net = dr.DlibResNet29().eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, 103, 103))
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 3, 102, 102))


# --------------------------------------------------------------------------------------------
# bad files


def test_wrong_sha256_is_one_line(fake):
    folder, *_ = fake
    with pytest.raises(FernoiseError) as e:
        dr.DlibResNet29.from_faceapi(folder)  # the real files' hashes
    assert "sha256" in one_line(e) and dr.FACEAPI_BIN in str(e.value)


def test_truncated_and_longer_bin(fake, tmp_path):
    folder, hashes, floats, quant, _ = fake
    for name, cut in (("short", -1), ("long", None)):
        d = tmp_path / name
        d.mkdir()
        data = (folder / dr.FACEAPI_BIN).read_bytes()
        (d / dr.FACEAPI_BIN).write_bytes(data[:cut] if cut else data + b"\0")
        (d / dr.FACEAPI_MANIFEST).write_bytes((folder / dr.FACEAPI_MANIFEST).read_bytes())
        with pytest.raises(FernoiseError) as e:
            dr.DlibResNet29.from_faceapi(d, sha256=None)
        assert ("truncated" if cut else "accounts for") in one_line(e)
        with pytest.raises(FernoiseError, match="sha256"):  # and the hash says it first
            dr.DlibResNet29.from_faceapi(d, sha256=hashes)


def test_missing_extra_misshaped_tensor(fake, tmp_path):
    _, _, floats, quant, _ = fake
    net = dr.DlibResNet29()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    q2 = dict(quant)
    del q2["conv128_2/conv1/scale/biases"]
    write_faceapi(tmp_path / "missing", floats, q2)
    with pytest.raises(FernoiseError) as e:
        net.load_faceapi_tensors(dr.read_faceapi(tmp_path / "missing", sha256=None))
    assert "missing 1 tensor" in one_line(e) and "conv128_2/conv1/scale/biases" in str(e.value)

    q3 = dict(quant, **{"conv512/scale/weights": (np.zeros(4, np.uint8), 1.0, 0.0)})
    write_faceapi(tmp_path / "extra", floats, q3)
    with pytest.raises(FernoiseError) as e:
        net.load_faceapi_tensors(dr.read_faceapi(tmp_path / "extra", sha256=None))
    assert "unexpected 1 tensor" in one_line(e) and "conv512/scale/weights" in str(e.value)

    q4 = dict(quant)
    q, s, m = q4["fc"]
    q4["fc"] = (q.T.copy(), s, m)  # [128, 256]: the transposed layout
    write_faceapi(tmp_path / "shape", floats, q4)
    with pytest.raises(FernoiseError) as e:
        net.load_faceapi_tensors(dr.read_faceapi(tmp_path / "shape", sha256=None))
    assert "fc has shape [128, 256]" in one_line(e)

    for k, v in net.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_no_folder_no_manifest_bad_manifest(tmp_path):
    with pytest.raises(FernoiseError, match="does not exist"):
        dr.read_faceapi(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FernoiseError) as e:
        dr.read_faceapi(tmp_path / "empty")
    assert dr.FACEAPI_MANIFEST in one_line(e)
    d = tmp_path / "bad"
    d.mkdir()
    (d / dr.FACEAPI_MANIFEST).write_text("{not json")
    (d / dr.FACEAPI_BIN).write_bytes(b"")
    with pytest.raises(FernoiseError) as e:
        dr.read_faceapi(d, sha256=None)
    assert "not a TensorFlow.js weights manifest" in one_line(e)
    (d / dr.FACEAPI_MANIFEST).write_text(json.dumps([{"paths": ["../x.bin"], "weights": []}]))
    with pytest.raises(FernoiseError, match="not in"):
        dr.read_faceapi(d, sha256=None)


# --------------------------------------------------------------------------------------------
# the real weights against dlib (shared data)


def _shared(fn):
    for m in needs(FACEAPI / dr.FACEAPI_BIN) + needs(WILD):
        fn = m(fn)
    return fn


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


@pytest.fixture(scope="module")
def fixture_chips():
    fx = json.loads(FIXTURE.read_text())
    photos: dict[str, np.ndarray] = {}
    chips = []
    for c in fx["chips"]:
        path = WILD / c["file"]
        if c["file"] not in photos:
            assert hashlib.sha1(path.read_bytes()).hexdigest() == c["file_sha1"], (
                f"{path} is not the photo of the fixture"
            )
            photos[c["file"]] = _load_rgb(path)
        chips.append(dr.extract_chip(photos[c["file"]], c["chip_rect_ltrb"], c["chip_angle"]))
    return fx, chips


@_shared
def test_real_weights_load():
    net = dr.DlibResNet29.from_faceapi(FACEAPI)  # checks both sha256
    assert sum(p.numel() for p in net.parameters()) == 5_614_592


@_shared
def test_rebuilt_chips_are_dlibs_pixels(fixture_chips):
    """extract_chip gives dlib's chips byte for byte (when Pillow decodes the JPEGs as it did
    for the fixture)."""
    from PIL import __version__ as pillow

    fx, chips = fixture_chips
    same = [
        hashlib.sha256(np.ascontiguousarray(ch).tobytes()).hexdigest() == c["chip_sha256"]
        for ch, c in zip(chips, fx["chips"], strict=True)
    ]
    if not all(same) and pillow != fx["pillow_version"]:
        pytest.skip(
            f"Pillow {pillow} decodes differently from {fx['pillow_version']} of the fixture"
        )
    assert all(same), [c["id"] for c, s in zip(fx["chips"], same, strict=True) if not s]


@_shared
def test_port_computes_dlibs_descriptors(fixture_chips):
    """cosine >= 0.99 with dlib's own descriptor on every chip; pairwise distances as dlib's;
    same-person pairs below different-person pairs as often as with dlib."""
    fx, chips = fixture_chips
    assert len(chips) >= 20
    ref = np.asarray([c["descriptor"] for c in fx["chips"]], dtype=np.float64)
    net = dr.DlibResNet29.from_faceapi(FACEAPI).eval()
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    with torch.no_grad():
        port = torch.cat([net(net.normalize(b)) for b in x.split(32)]).double().numpy()
    cos = (port * ref).sum(1) / (np.linalg.norm(port, axis=1) * np.linalg.norm(ref, axis=1))
    low = {c["id"]: round(float(v), 4) for c, v in zip(fx["chips"], cos, strict=True) if v < 0.99}
    assert not low, f"cosine below 0.99: {low}"
    assert np.abs(np.linalg.norm(port, axis=1) / np.linalg.norm(ref, axis=1) - 1).max() < 0.02

    def pairwise(d):
        return np.sqrt(((d[:, None, :] - d[None, :, :]) ** 2).sum(-1))

    iu = np.triu_indices(len(ref), 1)
    dp, dd = pairwise(port), pairwise(ref)
    assert np.corrcoef(dp[iu], dd[iu])[0, 1] > 0.99
    same, diff = [], []
    for i in range(len(chips)):
        for j in range(i + 1, len(chips)):
            a, b = fx["chips"][i], fx["chips"][j]
            if a["identity"] and b["identity"]:
                (same if a["identity"] == b["identity"] else diff).append((i, j))
            elif a["file"] == b["file"] and a["file"] not in fx["collages"]:
                diff.append((i, j))
    same, diff = np.asarray(same), np.asarray(diff)
    assert len(same) >= 20 and len(diff) >= 100

    def ranking(d):
        return (d[same[:, 0], same[:, 1]][:, None] < d[diff[:, 0], diff[:, 1]][None, :]).mean()

    assert ranking(dd) > 0.99  # dlib separates them
    assert ranking(dp) >= ranking(dd) - 0.005  # and so does the port
    agree = ((dp < 0.6) == (dd < 0.6))[np.r_[same[:, 0], diff[:, 0]], np.r_[same[:, 1], diff[:, 1]]]
    assert agree.mean() >= 0.99
