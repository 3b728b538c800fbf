"""The root file system's pure parts on hand-written inputs: the package versions read from
the cached .deb names, and the mmdebstrap command line (no root, no build: fast; the build
itself is tested in tests/test_virtual_k1.py)."""

from __future__ import annotations

from pipeline.virtual_k1 import rootfs as vk_rootfs


def test_package_versions_from_the_deb_names(tmp_path):
    names = ["python3_3.13.5-1_riscv64.deb",
             "python3-numpy_1%3a2.2.4+ds-1_riscv64.deb",       # epoch 1, ':' as %3a
             "python3-onnxruntime_1.21.0+dfsg-1_riscv64.deb",
             "base-files_13.8_riscv64.deb",
             "bash_5.2.15-2_riscv64.deb", "bash_5.2.37-2_riscv64.deb",   # the later name wins
             "libfoo_1.0_riscv64.deb",                          # not one of PACKAGES
             "dash_0.5.12-12_riscv64.deb.partial",              # not a .deb
             "coreutils_9.7-2_all.udeb"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert vk_rootfs.package_versions(tmp_path) == {
        "base-files": "13.8", "bash": "5.2.37-2", "python3": "3.13.5-1",
        "python3-numpy": "1:2.2.4+ds-1", "python3-onnxruntime": "1.21.0+dfsg-1"}
    # In the order of the file names ("-" sorts before "_").
    assert list(vk_rootfs.package_versions(tmp_path)) == [
        "base-files", "bash", "python3-numpy", "python3-onnxruntime", "python3"]


def test_no_cached_packages_no_versions(tmp_path):
    assert vk_rootfs.package_versions(tmp_path) == {}
    assert vk_rootfs.package_versions(tmp_path / "absent") == {}


def test_an_epoch_written_twice_is_read_back_everywhere(tmp_path):
    (tmp_path / "libc-bin_2%3a2.41%3a1-3_riscv64.deb").write_bytes(b"")
    assert vk_rootfs.package_versions(tmp_path) == {"libc-bin": "2:2.41:1-3"}


def test_ready_recipe_is_the_recipe_of_a_complete_root_or_none(tmp_path):
    marker = tmp_path / vk_rootfs.READY
    assert vk_rootfs.ready_recipe(tmp_path) is None
    marker.write_text('{"recipe": "abc", "packages": {}}')
    assert vk_rootfs.ready_recipe(tmp_path) == "abc"
    marker.write_text('{"packages": {}}')
    assert vk_rootfs.ready_recipe(tmp_path) is None
    marker.write_text('{"recipe": "ab')  # a marker cut short
    assert vk_rootfs.ready_recipe(tmp_path) is None
