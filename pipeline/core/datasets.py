"""Registry of the datasets the pipeline can download: the built-in ones here, and the
user's own declared in the params file (`[[datasets]]`, turned into the same `DatasetSpec`
by `pipeline.core.params`).

Checksums: where the SHA-256 of a decompressed file is known we pin it, because that is what
a faithful mirror preserves (re-compressing changes the .gz bytes, never the payload). The
published MD5 of the canonical .gz archive is kept too and accepted on its own, which is all
there is for Fashion-MNIST's image files. A user's file is pinned by the SHA-256 of its own
bytes (for a .gz, the SHA-256 of its content is accepted as well).

Imports neither numpy nor TensorFlow: dodo.py reads this registry on every `doit` call.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from pipeline.core.records import record

# The formats a dataset's files can have: "idx" is four gzipped IDX files (train images,
# train labels, test images, test labels) like MNIST; "npz" is one NumPy .npz holding
# x_train, y_train, x_test, y_test (images N x H x W uint8, labels integers).
FORMATS = ("idx", "npz")
IDX_ROLES = ("train images", "train labels", "test images", "test labels")

# How an image is framed in the input: the model card states it and predict does it. "digit"
# (MNIST) fits the ink in a 20x20 box and moves its centre of mass to the centre of the frame;
# "object" (Fashion-MNIST) trims the object, fits it to the whole frame and centres the box.
FRAMINGS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "digit": {"fit_box": 20, "center_of_mass": True,
              "description": "crop to the ink, fit a 20x20 box keeping the aspect ratio, "
                             "place so the centre of mass is at the centre of the 28x28"},
    "object": {"fit_box": 28, "center_of_mass": False,
               "description": "crop to the object, fit the 28x28 frame keeping the "
                              "aspect ratio, centre the box"},
})


@record
class RemoteFile:
    """One file of a dataset. `location` is where the user said it lives (a URL, or a local
    directory), tried after PIPELINE_MIRROR; the built-ins use their dataset's mirrors."""
    name: str
    archive_md5: str | None
    payload_sha256: str | None = None
    sha256: str | None = None
    location: str | None = None


@record
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    train_images: RemoteFile | None = None
    train_labels: RemoteFile | None = None
    test_images: RemoteFile | None = None
    test_labels: RemoteFile | None = None
    class_names: tuple[str, ...] = ()
    format: str = "idx"
    archive: RemoteFile | None = None  # the one file of an "npz" dataset
    framing: str = "digit"
    declared: bool = False             # declared in the params file (not built in)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"dataset {self.name}: format must be one of {FORMATS}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"dataset {self.name}: framing must be one of {list(FRAMINGS)}")

    @property
    def files(self) -> tuple[RemoteFile, ...]:
        if self.format == "npz":
            return (self.archive,) if self.archive else ()
        return tuple(f for f in (self.train_images, self.train_labels, self.test_images,
                                 self.test_labels) if f is not None)


MNIST = DatasetSpec(
    name="mnist",
    mirrors=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    train_images=RemoteFile(
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    train_labels=RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    test_images=RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    test_labels=RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    class_names=tuple(str(digit) for digit in range(10)),
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    train_images=RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    train_labels=RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    test_images=RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    test_labels=RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
    framing="object",
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
)

# The built-in datasets; a params file may declare more (Params.dataset_specs() has them all).
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {spec.name: spec for spec in (MNIST, FASHION_MNIST)})


def known_file(md5: str, sha256: str, payload_sha256: str | None,
               specs: Mapping[str, DatasetSpec]) -> str | None:
    """"MNIST's t10k-images-idx3-ubyte.gz" when these digests are one of the files `specs`
    pin, else None: a checksum error then says what a mirror served instead."""
    for spec in specs.values():
        for remote in spec.files:
            # A declared .gz may pin its content's SHA-256 in `sha256`.
            if (md5 == remote.archive_md5 or sha256 == remote.sha256
                    or (payload_sha256 is not None
                        and payload_sha256 in (remote.payload_sha256, remote.sha256))):
                return f"{spec.name}'s {remote.name}"
    return None
