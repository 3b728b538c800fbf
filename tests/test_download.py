import dataclasses
import gzip
import hashlib
import shutil

import numpy as np
import pytest

from pipeline.core.datasets import DATASETS, FASHION_MNIST, MNIST, DatasetSpec, RemoteFile
from pipeline.stages.download import (DownloadError, download_dataset, mirrors_for, user_mirror,
                               verify)
from tests.conftest import free_port, synthetic_images, write_idx_gz


def spec_for(directory, name="tiny") -> DatasetSpec:
    """A registry entry pinning the archives in `directory` by archive MD5 only."""
    def remote(file_name):
        return RemoteFile(file_name, hashlib.md5((directory / file_name).read_bytes()).hexdigest())
    return DatasetSpec(name, (), remote("train-images-idx3-ubyte.gz"),
                       remote("train-labels-idx1-ubyte.gz"), remote("t10k-images-idx3-ubyte.gz"),
                       remote("t10k-labels-idx1-ubyte.gz"), MNIST.class_names)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_registry_pins_the_published_checksums():
    assert set(DATASETS) == {"mnist", "fashion_mnist"}
    assert MNIST.train_images.payload_sha256.startswith("ba891046")
    assert FASHION_MNIST.train_images.archive_md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert FASHION_MNIST.class_names[9] == "Ankle boot"
    assert mirrors_for(MNIST, "/local")[0] == "/local"
    assert mirrors_for(MNIST, None) == list(MNIST.mirrors)


def test_real_mnist_over_http_is_verified_by_payload_sha256(mnist_url, tmp_path):
    # The local mirror's .gz framing differs from the canonical archives: only the
    # decompressed SHA-256 can accept it.
    seen = []
    paths = download_dataset(MNIST, tmp_path, [mnist_url], 30,
                             progress=lambda name, done, total: seen.append((name, done, total)))
    assert [p.name for p in paths] == [f.name for f in MNIST.files]
    assert seen[-1][1] == seen[-1][2] == (tmp_path / "t10k-labels-idx1-ubyte.gz").stat().st_size
    assert leftovers(tmp_path) == sorted(f.name for f in MNIST.files)


def test_directory_mirror_and_cache_reuse(tiny_dataset_dir, tmp_path):
    spec = spec_for(tiny_dataset_dir)
    download_dataset(spec, tmp_path, [str(tiny_dataset_dir)], 5)
    # Second call: verified from cache, no mirror needed at all.
    download_dataset(spec, tmp_path, [], 5)
    assert len(leftovers(tmp_path)) == 4


def test_bad_mirror_is_reported_and_next_one_used(tiny_dataset_dir, tmp_path, serve):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset_dir, bad)
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 8))
    log = []
    cache = tmp_path / "cache"
    download_dataset(spec_for(tiny_dataset_dir), cache, [serve(bad), serve(tiny_dataset_dir)], 5,
                     log=log.append)
    assert any("train-labels-idx1-ubyte.gz from http" in line and "checksum mismatch" in line
               for line in log)
    assert len(leftovers(cache)) == 4


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "not a complete gzip file"),          # truncated gz
    (lambda raw: b"not gzip at all" + raw, "not a complete gzip file"),      # corrupt archive
    (lambda raw: gzip.compress(gzip.decompress(raw)[:-1] + b"\x01"), "checksum mismatch"),
])
def test_damaged_archives_fail_and_leave_nothing(tiny_dataset_dir, tmp_path, damage, message):
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny_dataset_dir, mirror)
    target = mirror / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(damage(target.read_bytes()))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        download_dataset(spec_for(tiny_dataset_dir), cache, [str(mirror)], 5)
    assert message in str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    # The files verified before it are kept; nothing partial or unverified remains.
    assert leftovers(cache) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_payload_sha256_mismatch_is_named(tiny_dataset_dir, tmp_path):
    path = tiny_dataset_dir / "train-labels-idx1-ubyte.gz"
    wrong = RemoteFile(path.name, "0" * 32, "f" * 64)
    with pytest.raises(DownloadError, match="SHA-256 of decompressed content .* expected f{64}"):
        verify(path, wrong)


def test_no_reachable_mirror_names_every_mirror_and_the_fix(tiny_dataset_dir, tmp_path, serve):
    dead = f"http://127.0.0.1:{free_port()}/"
    missing_dir = str(tmp_path / "no-such-dir")
    empty = serve(tmp_path)  # answers 404
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        download_dataset(spec_for(tiny_dataset_dir), cache, [dead, missing_dir, empty], 2)
    text = str(err.value)
    assert dead in text and "cannot connect" in text
    assert missing_dir in text and "No such file" in text
    assert empty in text and "HTTP 404" in text
    # The hint names the user's own options, not a path that exists only beside our checkout.
    assert "PIPELINE_MIRROR=<directory or URL>" in text
    assert "PIPELINE_MIRROR_TINY=<directory or URL>" in text and "tiny/ subfolder" in text
    assert "see docs/offline.md" in text
    assert text.splitlines()[0] == ("dataset tiny is missing: it is not in the cache and no "
                                    "mirror has it. Give a copy with PIPELINE_MIRROR=<directory "
                                    "or URL> (see docs/offline.md).")
    assert "../shared" not in text
    assert leftovers(cache) == []


def test_bad_cached_file_is_replaced(tiny_dataset_dir, tmp_path):
    spec = spec_for(tiny_dataset_dir)
    download_dataset(spec, tmp_path, [str(tiny_dataset_dir)], 5)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    log = []
    download_dataset(spec, tmp_path, [str(tiny_dataset_dir)], 5, log=log.append)
    assert any("is bad" in line for line in log)
    verify(tmp_path / "train-images-idx3-ubyte.gz", spec.train_images)


def test_bad_cached_file_is_removed_even_when_no_mirror_replaces_it(tiny_dataset_dir,
                                                                     tmp_path):
    spec = spec_for(tiny_dataset_dir)
    download_dataset(spec, tmp_path, [str(tiny_dataset_dir)], 5)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DownloadError, match="could not download tiny/train-images"):
        download_dataset(spec, tmp_path, [str(tmp_path / "no-such-mirror")], 5)
    # A file known to be bad is never left in the cache to be found again.
    assert not bad.exists()


def test_fashion_registry_refuses_files_that_are_not_fashion_mnist(tiny_dataset_dir, tmp_path):
    # Fashion-MNIST's image archives are pinned by MD5 only; a look-alike is still refused.
    with pytest.raises(DownloadError, match="checksum mismatch: archive MD5"):
        download_dataset(FASHION_MNIST, tmp_path, [str(tiny_dataset_dir)], 5)
    assert leftovers(tmp_path) == []


def test_remote_file_is_plain_data():
    assert dataclasses.is_dataclass(RemoteFile) and RemoteFile("a", "b").payload_sha256 is None


def other_dataset(directory):
    """Valid IDX archives under the usual names whose content is not the tiny dataset's."""
    labels = (list(range(10)) * 6)[:50]
    import numpy as np

    y = np.array(labels)
    write_idx_gz(directory / "train-images-idx3-ubyte.gz", synthetic_images(y, 11))
    write_idx_gz(directory / "train-labels-idx1-ubyte.gz", y)
    write_idx_gz(directory / "t10k-images-idx3-ubyte.gz", synthetic_images(y, 12))
    write_idx_gz(directory / "t10k-labels-idx1-ubyte.gz", y)
    return directory


def test_user_mirror_per_dataset_subfolder_and_variable(tiny_dataset_dir, tmp_path, serve):
    root = tmp_path / "mirrors"
    shutil.copytree(tiny_dataset_dir, root / "tiny")
    other_dataset(root / "mnist")
    # One directory holding <dataset>/ subfolders serves each dataset from its own.
    assert user_mirror("tiny", {"PIPELINE_MIRROR": str(root)}) == str(root / "tiny")
    assert user_mirror("tiny", {"PIPELINE_MIRROR": f"file://{root}"}) == str(root / "tiny")
    # The single-folder form keeps working: no subfolder of that name, the folder itself.
    assert user_mirror("tiny", {"PIPELINE_MIRROR": str(tiny_dataset_dir)}) == str(
        tiny_dataset_dir)
    # A URL is used as given (a per-dataset URL goes in PIPELINE_MIRROR_<DATASET>).
    url = serve(tiny_dataset_dir)
    assert user_mirror("tiny", {"PIPELINE_MIRROR": url}) == url
    # The per-dataset variable wins over the shared mirror.
    env = {"PIPELINE_MIRROR": str(root / "mnist"), "PIPELINE_MIRROR_TINY": url}
    assert user_mirror("tiny", env) == url
    assert user_mirror("fashion_mnist", {}) is None
    assert user_mirror("fashion_mnist", {"PIPELINE_MIRROR_FASHION_MNIST": "/f"}) == "/f"

    spec = spec_for(tiny_dataset_dir)
    cache = tmp_path / "cache"
    download_dataset(spec, cache, mirrors_for(spec, user_mirror("tiny", env), offline=True), 5)
    assert len(leftovers(cache)) == 4
    cache2 = tmp_path / "cache2"
    download_dataset(spec, cache2, mirrors_for(
        spec, user_mirror("tiny", {"PIPELINE_MIRROR": str(root)}), offline=True), 5)
    assert len(leftovers(cache2)) == 4


def test_mirror_of_another_dataset_is_reported_and_public_mirrors_tried(tiny_dataset_dir,
                                                                        tmp_path, serve):
    wrong = serve(other_dataset(tmp_path / "other"))
    # The registry's public mirror, played by a real HTTP server on 127.0.0.1.
    spec = dataclasses.replace(spec_for(tiny_dataset_dir), mirrors=(serve(tiny_dataset_dir),))
    log = []
    cache = tmp_path / "cache"
    download_dataset(spec, cache, mirrors_for(spec, wrong, offline=False), 5, log=log.append)
    assert len(leftovers(cache)) == 4
    assert sum(f"from {wrong} failed: checksum mismatch" in line for line in log) == 4
    assert sum(f"verified from {spec.mirrors[0]}" in line for line in log) == 4

    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        download_dataset(spec, tmp_path / "offline", mirrors_for(spec, wrong, offline=True), 5)
    assert wrong in str(err.value) and spec.mirrors[0] not in str(err.value)


def test_url_mirror_with_dataset_subfolders(tiny_dataset_dir, tmp_path, serve):
    # PIPELINE_MIRROR=http://host/ holding tiny/ (and mnist/) folders, like a directory mirror.
    root = tmp_path / "mirrors"
    shutil.copytree(tiny_dataset_dir, root / "tiny")
    other_dataset(root / "mnist")
    url = serve(root)
    spec = spec_for(tiny_dataset_dir)
    mirrors = mirrors_for(spec, user_mirror("tiny", {"PIPELINE_MIRROR": url}), offline=True)
    assert mirrors == [url + "tiny/", url]
    log = []
    download_dataset(spec, tmp_path / "cache", mirrors, 5, log=log.append)
    assert len(leftovers(tmp_path / "cache")) == 4
    assert all(f"verified from {url}tiny/" in line for line in log), log
    # A flat URL mirror still works; the subfolder's 404s are not reported when it does.
    flat = serve(tiny_dataset_dir)
    log = []
    download_dataset(spec, tmp_path / "cache2",
                     mirrors_for(spec, user_mirror("tiny", {"PIPELINE_MIRROR": flat}), True), 5,
                     log=log.append)
    # "HTTP 404", not "404": the mirror's random port may hold those digits (seen: a flake).
    assert len(leftovers(tmp_path / "cache2")) == 4 and not any("HTTP 404" in line for line in log)


def test_checksum_error_says_what_the_file_is(tiny_dataset_dir, tmp_path):
    spec = spec_for(tiny_dataset_dir)
    known = {"tiny": spec}
    # The test images served under the train images' name: recognised by its pinned MD5.
    with pytest.raises(DownloadError, match="this is tiny's t10k-images-idx3-ubyte.gz"):
        verify(tiny_dataset_dir / "t10k-images-idx3-ubyte.gz", spec.train_images, known)
    page = tmp_path / "train-images-idx3-ubyte.gz"
    page.write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    with pytest.raises(DownloadError, match="an HTML/XML page"):
        verify(page, spec.train_images, known)
    unknown = write_idx_gz(tmp_path / "x.gz", np.zeros((3, 5, 7), np.uint8))
    with pytest.raises(DownloadError, match="a gzip file holding an IDX file of 3x5x7"):
        verify(unknown, MNIST.train_images)


def test_cli_mirror_may_be_the_parent_of_dataset_folders(mnist_dir, tmp_path):
    import subprocess
    import sys

    parent = tmp_path / "datasets"
    parent.mkdir()
    (parent / "mnist").symlink_to(mnist_dir, target_is_directory=True)
    ok = subprocess.run([sys.executable, "-m", "pipeline.stages.download", "mnist", str(tmp_path / "c"),
                         "--mirror", str(parent), "--offline"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert len(leftovers(tmp_path / "c")) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, "-m", "pipeline.stages.download", "mnist", str(tmp_path / "d"),
                          "--mirror", str(empty), "--offline"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1
    assert f"No such file {empty}/train-images-idx3-ubyte.gz" in bad.stderr


def test_declared_idx_dataset_is_fetched_from_its_own_location(tiny_dataset_dir, tmp_path, serve):
    from pipeline.core.declared import DatasetDecl

    url = serve(tiny_dataset_dir)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # Checksums of the decompressed content are accepted for a .gz, as for MNIST.
    digests = [hashlib.sha256(gzip.decompress((tiny_dataset_dir / n).read_bytes())).hexdigest()
               for n in names]
    spec = DatasetDecl("letters", "idx", tuple(url + n for n in names), tuple(digests),
                       tuple("abcdefghij"), "digit").spec(tmp_path)
    assert [f.location for f in spec.files] == [url] * 4
    download_dataset(spec, tmp_path / "cache", mirrors_for(spec, None, offline=True), 5)
    assert leftovers(tmp_path / "cache") == sorted(names)
    wrong = DatasetDecl("letters", "idx", tuple(url + n for n in names),
                        (digests[2], *digests[1:]), tuple("abcdefghij"), "digit").spec(tmp_path)
    # The first checksum is the test images' by mistake: the file is named for what it is.
    with pytest.raises(DownloadError, match="checksum mismatch.*this is letters's "
                                            "train-images-idx3-ubyte.gz"):
        download_dataset(wrong, tmp_path / "cache3", [], 5, known={"letters": spec})


def test_unavailable_looks_without_downloading(tiny_dataset_dir, tmp_path, serve):
    from pipeline.stages.download import unavailable

    spec = spec_for(tiny_dataset_dir)
    assert unavailable(spec, tmp_path / "cache", [str(tiny_dataset_dir)], 2) is None
    assert unavailable(spec, tmp_path / "cache", [serve(tiny_dataset_dir)], 2) is None
    empty = serve(tmp_path)
    why = unavailable(spec, tmp_path / "cache", [empty, str(tmp_path / "none")], 2)
    assert why.startswith("no mirror has tiny/train-images-idx3-ubyte.gz")
    assert f"{empty}: HTTP 404" in why and "none: no such file" in why
    assert leftovers(tmp_path / "cache") == []  # nothing fetched
    download_dataset(spec, tmp_path / "cache", [str(tiny_dataset_dir)], 5)
    assert unavailable(spec, tmp_path / "cache", [], 2) is None  # cached: no mirror needed
