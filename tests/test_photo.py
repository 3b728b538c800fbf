"""photo: from a picture file to a model input, part by part, against independent
computations (a sliding window, a brute-force Otsu, a flood fill, Pillow's exif_transpose)
and synthetic pages whose ink is known. predict's end-to-end accuracy on real digits is in
tests/test_predict.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.predict import photo
from tests import photo_digits


def _write(path, image):
    image.save(path)
    return path


def test_exif_orientation_is_applied_as_pillow_reads_it(tmp_path):
    """Every orientation 2..8, on an asymmetric picture, against Pillow's exif_transpose."""
    from PIL import ImageOps

    upright = np.full((60, 40), 230, np.uint8)
    upright[5:50, 5:12] = 20     # an L shape: flips and turns all differ
    upright[43:50, 5:30] = 20
    for orientation in range(1, 9):
        for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
            exif = Image.Exif()
            exif[photo.ORIENTATION_TAG] = orientation
            path = tmp_path / f"o{orientation}{suffix}"
            Image.fromarray(upright).save(path, format=fmt, exif=exif.tobytes())
            expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
            got = np.asarray(photo.load_image(path))
            assert got.shape == expected.shape, (orientation, fmt)
            assert np.abs(got.astype(int) - expected).max() <= (0 if fmt == "PNG" else 2)
    stored = tmp_path / "o6.jpg"
    assert np.asarray(photo.load_image(stored)).shape == (40, 60)  # 6: stored sideways


def test_pixel_limits_at_their_boundary(tmp_path):
    side = 5000
    assert side * side == photo.MAX_PIXELS
    at_limit = _write(tmp_path / "at.png", Image.new("1", (side, side), 1))
    over = _write(tmp_path / "over.png", Image.new("1", (side, side + 1), 1))
    assert max(photo.load_image(at_limit).size) <= photo.WORK_SIDE
    with pytest.raises(photo.ImageError, match="5000 x 5001 pixels is more than predict's "
                                               "limit of 25 Mpx"):
        photo.load_image(over)
    # A progressive JPEG keeps every coefficient while decoding: the whole-image limit.
    progressive = tmp_path / "progressive.jpg"
    Image.new("L", (side, side + 1), 200).save(progressive, progressive=True)
    with pytest.raises(photo.ImageError, match="5000 x 5001 pixels"):
        photo.load_image(progressive)
    baseline = tmp_path / "baseline.jpg"
    Image.new("L", (side, side + 1), 200).save(baseline)
    assert max(photo.load_image(baseline).size) <= photo.WORK_SIDE


def test_normalized_digit_is_light_on_black_and_centred_by_mass():
    page = Image.new("L", (300, 120), 250)  # a dark bar far off-centre on light paper
    page.paste(0, (10, 10, 22, 70))
    out = photo.normalize(photo.to_gray(page))
    assert out.shape == (28, 28) and out.max() == 255 and out[0].max() == 0
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 13.5) < 0.6
    assert abs((xs * out).sum() / out.sum() - 13.5) < 0.6
    assert np.count_nonzero(out.max(axis=1) > 128) == 20  # the long side fits the 20 px box


def test_transparent_layer_keeps_light_strokes_too():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[5:35, 18:22] = (255, 255, 255, 255)  # white stroke, hidden pixels white as well
    rgba[..., :3] = 255
    gray = photo.to_gray(Image.fromarray(rgba, "RGBA"))
    assert gray[20, 20] == 255 and gray[0, 0] == 0


def _window(a, k, op):
    """The k x k sliding-window max or min of `a`, edges repeated: the reference."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(a, k // 2, mode="edge")
    return op(sliding_window_view(padded, (k, k)), axis=(-2, -1))


def test_the_paper_level_is_the_grey_closing_or_opening_of_a_sliding_window():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(23, 37))
    for k in (3, 5, 9, 23):  # below 48 no pooling: the closing itself
        closing = _window(_window(a, k, np.max), k, np.min)
        opening = _window(_window(a, k, np.min), k, np.max)
        assert np.array_equal(photo.background(a, k, dark_ink=True), closing), k
        assert np.array_equal(photo.background(a, k, dark_ink=False), opening), k


def test_smoothing_is_a_3x3_mean_with_edges_repeated():
    rng = np.random.default_rng(7)
    a = rng.random((11, 13))
    padded = np.pad(a, 1, mode="edge")
    mean = sum(padded[1 + dy:12 + dy, 1 + dx:14 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    assert np.allclose(photo.smoothed(a, 1), mean, rtol=0, atol=1e-12)


def test_parts_have_the_mass_and_box_of_a_rescan_per_label():
    rng = np.random.default_rng(8)
    mask = rng.random((30, 40)) < 0.4
    weights = rng.random((30, 40))
    labels = photo._components(mask)
    parts = photo._parts(labels, weights)
    assert [p["label"] for p in parts] == sorted(set(labels[labels > 0].tolist()))
    for part in parts:
        ys, xs = np.nonzero(labels == part["label"])
        assert part["box"] == (ys.min(), ys.max(), xs.min(), xs.max())
        assert part["mass"] == pytest.approx(weights[ys, xs].sum(), rel=1e-12)


def test_otsu_maximises_the_between_class_variance():
    rng = np.random.default_rng(5)
    values = np.clip(np.concatenate([rng.normal(0.1, 0.05, 3000), rng.normal(0.7, 0.1, 400)]),
                     0, 1)
    t = photo.otsu(values)

    def between(threshold):
        low, high = values[values < threshold], values[values >= threshold]
        return len(low) * len(high) * (low.mean() - high.mean()) ** 2

    candidates = np.linspace(0.05, 0.95, 181)
    best = candidates[np.argmax([between(c) for c in candidates])]
    assert abs(t - best) < 0.02 and 0.25 < t < 0.55


def test_components_are_the_8_connected_regions():
    rng = np.random.default_rng(6)
    for trial in range(5):
        mask = rng.random((30, 40)) < 0.35 + 0.05 * trial
        labels = photo._components(mask)
        # Flood fill, one region at a time, as the reference.
        seen = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            region, stack = [], [(y, x)]
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                region.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < 30 and 0 <= nx < 40 and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            ys, xs = zip(*region)
            ids = set(labels[list(ys), list(xs)].tolist())
            assert len(ids) == 1 and 0 not in ids
            assert (labels == ids.pop()).sum() == len(region)  # nothing else shares the label
        assert (labels[~mask] == 0).all()


def test_shadow_across_the_page_is_paper_not_ink():
    """A soft shadow and a gradient darken the paper far more than the noise; the ink map
    still sees only the stroke."""
    h, w = 200, 160
    ys, xs = np.mgrid[0:h, 0:w]
    light = (1 - 0.3 * xs / w) * (1 - 0.4 / (1 + np.exp(-(ys - 100) / 8)))
    paper = 225 * light + np.random.default_rng(7).normal(0, 8, (h, w))
    paper[60:140, 70:78] = 40 * light[60:140, 70:78]  # one stroke, half of it in the shadow
    ink = photo.ink_map(paper)
    assert ink[60:140, 71:77].min() > 0.6
    lit, shadowed = ink[:50], ink[150:]  # away from the stroke, above and in the shadow
    assert np.median(lit) < 0.05 and np.median(shadowed) < 0.05  # no offset from the light
    crop = photo.digit_ink(paper)  # exactly the stroke is found, nothing of the shadow
    assert abs(crop.shape[0] - 80) <= 4 and abs(crop.shape[1] - 8) <= 4, crop.shape


def test_ink_wider_than_the_paper_window_is_ink_not_paper():
    """A filled square of half the picture: the closing's window cannot span it, yet it is ink
    (inside the page, so not a shadow coming in from an edge)."""
    page = np.full((120, 160), 225.0)
    page[20:100, 40:120] = 30.0
    crop = photo.digit_ink(page)
    assert crop.shape == (80, 80) and crop.mean() > 0.95


def test_ruled_lines_and_a_desk_at_the_edge_are_not_the_digit():
    page = np.full((160, 200), 225.0) + np.random.default_rng(9).normal(0, 4, (160, 200))
    for y in range(10, 160, 30):      # ruled lines across the whole page, 3 px thick
        page[y:y + 3, :] = 70.0
    page[:, :14] = 60.0               # the desk along the left side
    page[40:120, 96:104] = 30.0       # the stroke, crossing three lines
    crop = photo.digit_ink(page)
    assert abs(crop.shape[0] - 80) <= 3 and crop.shape[1] <= 12, crop.shape


@pytest.fixture(scope="module")
def seven(mnist_dir):
    """The first MNIST test digit (a 7), white on black."""
    from pipeline.core.datasets import MNIST
    from pipeline.stages.preprocess import preprocess

    return preprocess(MNIST, mnist_dir)["x_test"][0]


def test_noisy_photo_input_is_a_centred_digit_not_a_grey_square(seven, tmp_path):
    """The issue's failure: noisy paper counted as ink, the digit shrunk inside a grey box."""
    data, suffix = photo_digits.noisy_paper(seven, np.random.default_rng(3))
    path = tmp_path / f"noisy{suffix}"
    path.write_bytes(data)
    pixels = photo.normalize(photo.to_gray(photo.load_image(path)))
    # Paper noise is not ink: whatever is not black lies in the 20 px box (+1 for the
    # resampling's ringing), and the digit fills that box.
    rows = np.nonzero(pixels.max(axis=1) > 0)[0]
    cols = np.nonzero(pixels.max(axis=0) > 0)[0]
    assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 21
    rows = np.nonzero(pixels.max(axis=1) > 64)[0]
    cols = np.nonzero(pixels.max(axis=0) > 64)[0]
    assert max(np.ptp(rows), np.ptp(cols)) + 1 >= 18
    assert pixels.max() == 255 and (pixels > 0).mean() < 0.4  # strokes, not a blob
    # Not binarised: the strokes keep soft edges as MNIST's do.
    assert ((pixels > 0) & (pixels < 200)).sum() >= 0.2 * (pixels > 0).sum()


def test_otsu_is_the_best_bin_edge_of_a_brute_force_search():
    rng = np.random.default_rng(11)
    values = np.clip(np.concatenate([rng.normal(0.2, 0.08, 2000), rng.normal(0.75, 0.05, 600)]),
                     0, 1)

    def between(threshold):
        low, high = values[values < threshold], values[values >= threshold]
        if not len(low) or not len(high):
            return 0.0
        return len(low) * len(high) * (low.mean() - high.mean()) ** 2

    edges = np.arange(1, 256) / 256
    assert between(photo.otsu(values)) == pytest.approx(max(between(e) for e in edges), rel=1e-9)
    # Two levels only: the threshold splits them (a threshold one bin low would put the
    # lower level on the ink side).
    two = np.array([0.1] * 50 + [0.9] * 10)
    t = photo.otsu(two)
    assert 0.1 < t <= 0.9


def test_a_dark_on_light_card_gets_the_inverted_input():
    page = np.full((60, 60), 235, np.uint8)
    page[15:45, 27:33] = 20  # a dark stroke on paper
    image = Image.fromarray(page)
    framing = {"height": 28, "width": 28, "fit_box": 20, "center_of_mass": True}
    light = photo.prepare(image, {"input": {"framing": framing, "polarity": "light_on_dark"}})
    dark = photo.prepare(image, {"input": {"framing": framing, "polarity": "dark_on_light"}})
    assert light.max() == 255 and light[0, 0] == 0  # light ink on black
    np.testing.assert_array_equal(dark, 255 - light)
