"""From a picture file to a model input: what `pipeline.predict.classify` feeds the models.

Users give predict photos of a digit on paper, scans, screenshots and files that are not
images at all. This module

1. opens only regular files (a FIFO or a device would block or never end) and refuses images
   of more than MAX_PIXELS before decoding them; JPEGs are decoded at 1/2..1/8 scale
   (`Image.draft`) and everything else is reduced right after decoding, so memory is bounded
   by the decoded file and work by WORK_SIDE;
2. applies the EXIF orientation (phones store pictures sideways and say so in a tag);
3. finds the ink: the paper's own level is estimated everywhere (a grey closing, which keeps
   gradients and shadow edges but removes strokes), ink is the darkening relative to it, an
   Otsu threshold separates ink from paper noise, and connected components pick the digit
   (specks, ruled lines, a desk at the page edge are left out);
4. frames the ink as the model card says (MNIST: 20x20 box, centre of mass at the centre of
   28x28), light on black, with the strokes' own intensities (not binarised).

Everything here is numpy, scipy.ndimage (filters and connected components, in C) and
Pillow; no TensorFlow.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import PipelineError

# Pillow's own bomb limit is 178 Mpx (a warning from 89 Mpx); predict refuses far less, so
# that memory stays under ~300 MB for any picture it accepts (measured: a 25 Mpx RGBA PNG
# peaks at ~230 MB, since Pillow decodes it whole at 4 bytes a pixel and reduce() copies it
# once more). A baseline JPEG is decoded at 1/8 scale straight away (`Image.draft`), so it
# may be larger; a progressive JPEG keeps all its coefficients while decoding, so it may not.
MAX_PIXELS = 25_000_000          # e.g. 6000 x 4000
MAX_JPEG_PIXELS = 120_000_000    # baseline JPEG, e.g. 12000 x 10000 (a 108 Mpx phone photo)
# Long side of the picture predict works on: a digit that fills a tenth of a 12 Mpx photo
# still has ~80 px, four times the 20 px box.
WORK_SIDE = 800
ORIENTATION_TAG = 0x0112
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class ImageError(PipelineError):
    pass


# --- reading a file ----------------------------------------------------------------------


def _not_regular(mode: int) -> str | None:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: Path):
    """A binary file object for `path`, which must be a regular file (symlinks followed).

    Checked before opening (a device is never opened) and again on the open descriptor (the
    file cannot be swapped in between). O_NONBLOCK: opening a FIFO never waits for a writer.
    """
    try:
        kind = _not_regular(os.stat(path).st_mode)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if kind:
        raise ImageError(f"{path}: {kind}, not an image file; give predict image files only")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = _not_regular(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise ImageError(f"{path}: {kind}, not an image file; give predict image files only")
    return os.fdopen(fd, "rb")


def _too_big(path: Path, width: int, height: int, limit: int) -> ImageError:
    return ImageError(f"{path}: {width} x {height} pixels is more than predict's limit of "
                      f"{limit / 1e6:.0f} Mpx; scale the picture down first")


def load_image(path: Path, work_side: int = WORK_SIDE) -> Any:
    """The picture in `path`, decoded at most about `work_side` on its long side, upright.

    Any failure is an ImageError naming the file. Pixel limits: MAX_PIXELS, MAX_JPEG_PIXELS.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    with open_regular(path) as fh:
        try:
            with warnings.catch_warnings():
                # Pillow warns from 89 Mpx; the limits below are lower and say it in one line.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fh)
            with image:
                width, height = image.size
                baseline_jpeg = image.format == "JPEG" and "progression" not in image.info
                limit = MAX_JPEG_PIXELS if baseline_jpeg else MAX_PIXELS
                if width * height > limit:
                    raise _too_big(path, width, height, limit)
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
                if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale straight away
                    image.draft(image.mode, (work_side, work_side))
                image.load()  # decode now: a truncated file fails here, not later
                small = reduced(image, work_side)
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image Pillow can read") from None
        except Image.DecompressionBombError as exc:
            size = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{int(size.group(1)) / 1e6:.0f} Mpx" if size else "too many pixels"
            raise ImageError(f"{path}: {pixels} is more than predict's limit of "
                             f"{MAX_PIXELS / 1e6:.0f} Mpx; scale the picture down first") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: unreadable image ({exc})") from None
    if orientation in _TRANSPOSE:
        small = small.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    return small


def reduced(image: Any, work_side: int) -> Any:
    """A copy of a loaded image at most ~work_side on its long side (box-filtered)."""
    from PIL import Image

    if image.mode == "P":  # palette indices cannot be averaged; transparency is kept
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    factor = -(-max(image.size) // work_side)  # ceiling
    if factor <= 1:
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "PA"):  # reduce() lacks these modes
        return image.resize((max(1, image.width // factor), max(1, image.height // factor)),
                            Image.Resampling.BOX)
    return image.reduce(factor)


def to_gray(image: Any) -> np.ndarray:
    """Luminance 0..255 (float) of any Pillow image.

    Transparent pixels are composited over a background that contrasts with the opaque ink
    (white behind dark ink, black behind light ink): a digit drawn on a transparent layer
    keeps its strokes whatever colour the hidden pixels have.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 257.0
    if mode in ("I", "F"):
        gray = np.asarray(image, dtype=np.float64)
        # Pillow opens some 16-bit PNGs as 32-bit "I": values beyond a byte are 16-bit ones.
        if gray.max() > 255:
            gray *= 255.0 / max(65535.0, gray.max())
        return gray
    if mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.float64)[..., 3] / 255.0
        lum = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
        if alpha.min() < 1.0:
            ink = (lum * alpha).sum() / max(alpha.sum(), 1e-9)
            background = 255.0 if ink < 128 else 0.0
            return lum * alpha + background * (1.0 - alpha)
        return lum
    return np.asarray(image.convert("L"), dtype=np.float64)


# --- finding the ink ---------------------------------------------------------------------


def smoothed(a: np.ndarray, passes: int = 2) -> np.ndarray:
    """3x3 means applied `passes` times (close to a Gaussian of sigma ~0.8 px per pass);
    edges repeated."""
    from scipy import ndimage

    for _ in range(passes):
        a = ndimage.uniform_filter(np.asarray(a, dtype=np.float64), 3, mode="nearest")
    return a


def _pooled(a: np.ndarray, f: int) -> np.ndarray:
    """Block means of f x f (edges repeated to whole blocks)."""
    h, w = a.shape
    p = np.pad(a, ((0, -h % f), (0, -w % f)), mode="edge")
    return p.reshape(p.shape[0] // f, f, p.shape[1] // f, f).mean(axis=(1, 3))


def _upsampled(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Block values interpolated (bilinear) back to a full-resolution `shape`."""
    from PIL import Image

    resized = Image.fromarray(a.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def background(a: np.ndarray, k: int, dark_ink: bool) -> np.ndarray:
    """The grey closing (dark ink) or opening (light ink) of `a` with a k x k window.

    Computed on block means of about k/24 pixels and interpolated back: the background is
    smooth at the window's scale anyway, and this keeps the cost to a few milliseconds.
    """
    from scipy import ndimage

    f = max(1, k // 24)
    small = _pooled(a, f) if f > 1 else a
    ks = max(3, k // f) | 1
    morph = ndimage.grey_closing if dark_ink else ndimage.grey_opening
    small = morph(small, size=(ks, ks), mode="nearest")
    return _upsampled(small, a.shape) if f > 1 else small


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the split with the largest between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    omega, mu = np.cumsum(p), np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between[~np.isfinite(between)] = 0
    return float(edges[int(np.argmax(between)) + 1])


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Ink strength 0..1 at every pixel, whatever the polarity, paper level and lighting.

    Polarity: the background is most of the picture, so the median is background; ink lies
    far from it on one side. Light ink on dark is taken only when the bright side clearly
    reaches further (photos of paper are the common case). The background's own level is a
    grey closing (opening for light ink) with a window of a third of the picture: it follows
    gradients and shadow edges (monotone, so kept) but not strokes (narrower than the window).
    Dark ink is measured relative to the paper it is on (a shadow darkens ink and paper
    alike), light ink as the excess over its background.
    """
    gray = np.asarray(gray, dtype=np.float32)
    smooth = smoothed(gray, 1) if min(gray.shape) >= 16 else gray
    lo, median, hi = np.percentile(smooth, [0.05, 50, 99.95])
    dark_ink = not (hi - median) > 2 * (median - lo)
    level = background(smooth, max(3, min(gray.shape) // 3) | 1, dark_ink)
    if dark_ink:
        if _enclosed_dark(level):  # ink wider than the window: a blob, not a shadow
            level = background(smooth, max(gray.shape) | 1, dark_ink)
        return np.clip((level - gray) / np.maximum(level, 16.0), 0.0, 1.0)
    return np.clip((gray - level) / 255.0, 0.0, 1.0)


def _enclosed_dark(level: np.ndarray) -> bool:
    """Whether the paper estimate has a deep dark region that touches no border.

    Shadows and a desk come in from the picture's edges; a dark region inside the page that
    the window could not close is ink too wide for it (a filled blob, a thumb print).
    """
    deep = level < 0.6 * float(np.percentile(level, 95))
    if not deep.any():
        return False
    labels = _components(_pooled_any(deep, max(1, -(-max(deep.shape) // 100))))
    edge = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    return bool(set(np.unique(labels).tolist()) - edge - {0})


def _components(mask: np.ndarray) -> np.ndarray:
    """Labels 1..n of the 8-connected components of `mask` (0 = background)."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels


def _bands(mask: np.ndarray, axis: int) -> np.ndarray:
    """Rows (axis 0) or columns (axis 1) of ink across most of the page that are not the digit:
    ruled lines (thin, and at least two of them: a digit's own bar in a tight crop is one)
    and, at the picture's edge, a desk or the page's shadow."""
    long = mask.mean(axis=1 - axis) > 0.8
    n = mask.shape[axis]
    thin, edge = max(2, round(0.05 * n)), round(0.25 * n)
    lines, bands = [], np.zeros_like(long)
    start = None
    for i, flag in enumerate([*long, False]):  # runs of long rows
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start <= thin:
                lines.append((start, i))
            elif (start == 0 or i == n) and i - start <= edge:
                bands[start:i] = True
            start = None
    for begin, end in lines if len(lines) >= 2 else ():
        bands[begin:end] = True
    return bands


def _pooled_any(mask: np.ndarray, block: int) -> np.ndarray:
    """Whether any pixel of each block x block tile is set (edges padded with False)."""
    h, w = -(-mask.shape[0] // block), -(-mask.shape[1] // block)
    padded = np.zeros((h * block, w * block), bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    return padded.reshape(h, block, w, block).any(axis=(1, 3))


def _parts(labels: np.ndarray, weights: np.ndarray) -> list[dict[str, Any]]:
    """Each component's label, ink mass, box and whether it lies along a border like a desk."""
    from scipy import ndimage

    h, w = labels.shape
    count = int(labels.max())
    masses = ndimage.sum_labels(weights, labels, np.arange(1, count + 1)) if count else []
    parts = []
    for label, (rows, cols), mass in zip(range(1, count + 1), ndimage.find_objects(labels),
                                         masses):
        top, bottom, left, right = rows.start, rows.stop - 1, cols.start, cols.stop - 1
        # Along a side it touches, a desk or a page edge runs most of the picture's length;
        # a digit that touches the border (a tight crop) is most often the only part.
        edge = ((top == 0 or bottom == h - 1) and right - left + 1 >= 0.7 * w) or \
               ((left == 0 or right == w - 1) and bottom - top + 1 >= 0.7 * h)
        parts.append({"label": label, "mass": float(mass),
                      "box": (top, bottom, left, right), "edge": bool(edge)})
    return parts


def _digit_parts(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The digit: the largest part that is not an edge (unless all are), and nearby strokes."""
    largest = max(p["mass"] for p in parts)
    inner = [p for p in parts if not p["edge"] and p["mass"] >= 0.02 * largest]
    main = max(inner or parts, key=lambda p: p["mass"])
    chosen = [main]
    top, bottom, left, right = main["box"]
    for _ in range(len(parts)):  # grow by nearby strokes (a 5's flag, a broken 4)
        reach = 0.3 * (max(bottom - top, right - left) + 1)
        near = [p for p in parts if p not in chosen and p["mass"] >= 0.03 * main["mass"]
                and (main["edge"] or not p["edge"])
                and p["box"][0] <= bottom + reach and p["box"][1] >= top - reach
                and p["box"][2] <= right + reach and p["box"][3] >= left - reach]
        if not near:
            break
        chosen += near
        boxes = np.array([p["box"] for p in chosen])
        top, bottom = boxes[:, 0].min(), boxes[:, 1].max()
        left, right = boxes[:, 2].min(), boxes[:, 3].max()
    return chosen


def digit_ink(gray: np.ndarray) -> np.ndarray:
    """The digit's ink (0..1) cropped to its box; everything that is not the digit is 0."""
    from scipy import ndimage

    ink = ink_map(gray)
    smooth = smoothed(ink, 1) if min(ink.shape) >= 16 else ink
    # Blank: nothing stands out of the paper's own noise (8 robust sigmas) or, on clean paper,
    # darker than it by 15 %.
    sample = smooth.ravel()[::3]
    centre = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - centre)))
    if smooth.max() < max(0.15, centre + 8 * spread):
        raise ImageError("no digit found: the image is blank")
    threshold = max(otsu(smooth), 0.25 * float(smooth.max()))
    mask = smooth > threshold
    mask[_bands(mask, 0)] = False
    mask[:, _bands(mask, 1)] = False
    # Components on a pooled mask (at most 200 tiles a side) keep labelling cheap.
    block = max(1, -(-max(mask.shape) // 200))
    labels = _components(_pooled_any(mask, block))
    h, w = labels.shape
    pad = ((0, h * block - ink.shape[0]), (0, w * block - ink.shape[1]))
    weights = np.pad(smooth * mask, pad).reshape(h, block, w, block).sum(axis=(1, 3))
    parts = _parts(labels, weights)
    if not parts:
        raise ImageError("no digit found: the image is blank")
    region = np.isin(labels, [p["label"] for p in _digit_parts(parts)])
    region = ndimage.maximum_filter(region, size=3, mode="nearest")  # soft edges
    region = np.repeat(np.repeat(region, block, 0), block, 1)[:ink.shape[0], :ink.shape[1]]
    # Keep the strokes' intensities: only what the paper's noise reaches is cut, and the rest
    # is scaled so that the strokes' cores are full ink.
    paper = ink[~mask][::7]  # a sample is enough for two medians
    floor = 0.0
    if paper.size:
        mad = float(np.median(np.abs(paper - np.median(paper))))
        floor = min(float(np.median(paper)) + 4 * 1.4826 * mad, 0.5 * threshold)
    core = float(np.percentile(ink[mask & region], 90)) if (mask & region).any() else ink.max()
    strokes = np.clip((ink - floor) / max(core - floor, 1e-6), 0.0, 1.0) * region
    rows, cols = np.nonzero(strokes > 0.05)
    if not len(rows):
        raise ImageError("no digit found: the image is blank")
    return strokes[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


# --- framing -----------------------------------------------------------------------------


def frame(ink: np.ndarray, size: tuple[int, int] = (28, 28), fit_box: int = 20,
          center_of_mass: bool = True) -> np.ndarray:
    """A `size` uint8 image of the cropped ink (0..1), light on black, framed like the data."""
    from PIL import Image

    ink = 255.0 * np.asarray(ink, dtype=np.float64)
    h, w = ink.shape
    scale = fit_box / max(h, w)
    fitted = Image.fromarray(ink.astype(np.float32), mode="F").resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    patch = np.clip(np.asarray(fitted), 0, 255)
    out = np.zeros(size, dtype=np.float64)
    ph, pw = patch.shape
    if center_of_mass and patch.sum() > 0:
        ys, xs = np.indices(patch.shape)
        mass = patch.sum()
        cy, cx = (ys * patch).sum() / mass, (xs * patch).sum() / mass
    else:
        cy, cx = (ph - 1) / 2, (pw - 1) / 2
    # Centre of the canvas in pixel-index coordinates; keep the whole patch on the canvas.
    top = int(np.clip(round((size[0] - 1) / 2 - cy), 0, size[0] - ph))
    left = int(np.clip(round((size[1] - 1) / 2 - cx), 0, size[1] - pw))
    out[top:top + ph, left:left + pw] = patch
    return np.round(out).astype(np.uint8)


def normalize(gray: np.ndarray, size: tuple[int, int] = (28, 28), fit_box: int = 20,
              center_of_mass: bool = True) -> np.ndarray:
    """A `size` uint8 image of light ink on black, framed as the training images were."""
    return frame(digit_ink(gray), size, fit_box, center_of_mass)


def prepare(image: Any, card: dict[str, Any]) -> np.ndarray:
    """A decoded image as the card's model input (height x width uint8)."""
    framing = card["input"]["framing"]
    pixels = normalize(to_gray(image), (framing["height"], framing["width"]), framing["fit_box"],
                       framing["center_of_mass"])
    # normalize() yields light ink on black, the polarity every card written so far states.
    return pixels if card["input"]["polarity"] == "light_on_dark" else 255 - pixels
