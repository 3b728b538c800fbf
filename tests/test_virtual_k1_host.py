"""What the virtual K1 reads from the host, on hand-written files: apt's sources in both
formats (deb822 .sources, one-line sources.list) and which entry is Debian's main archive,
the binfmt_misc entry it registers and reads back. No root, no board: fast."""

from __future__ import annotations

import pytest

from pipeline.virtual_k1 import host as vk_host


def test_deb822_paragraphs_fields_comments_and_continuations():
    text = ("# leading comment: with a colon\n"
            "Types: deb deb-src\n"
            "X-Repolib-Name: Debian\n"
            "URIs: http://a.example/debian\n"
            "\thttp://b.example/debian\n"
            "# a comment inside the paragraph ends nothing\n"
            "  https://c.example/debian  \n"
            "SUITES :  trixie  trixie-updates \n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            "no colon on this line\n"
            "\n"
            "   \n"
            "\n"
            "Types: deb\n"
            "Enabled: no\n"
            "URIs: http://off.example/debian")  # the last paragraph has no blank line after it
    assert vk_host.deb822_stanzas(text) == [
        {"types": "deb deb-src", "x-repolib-name": "Debian",
         "uris": "http://a.example/debian http://b.example/debian https://c.example/debian",
         "suites": "trixie  trixie-updates",
         "signed-by": "/usr/share/keyrings/debian-archive-keyring.gpg"},
        {"types": "deb", "enabled": "no", "uris": "http://off.example/debian"}]


def test_deb822_of_nothing_and_of_comments_is_no_paragraph():
    assert vk_host.deb822_stanzas("") == []
    assert vk_host.deb822_stanzas("# only\n\n# comments\n\n") == []


def test_a_continuation_line_before_any_field_belongs_to_no_field():
    # Indented, it cannot continue a field that does not exist; with a colon it is a field.
    assert vk_host.deb822_stanzas("  stray\nTypes: deb\n") == [{"types": "deb"}]
    assert vk_host.deb822_stanzas("Types: deb\n\n  stray\nURIs: u\n") == [
        {"types": "deb"}, {"uris": "u"}]
    assert vk_host.deb822_stanzas(" URIs: u\n") == [{"uris": "u"}]


@pytest.mark.parametrize("line, entry", [
    ("deb http://m.example/debian trixie main contrib non-free",
     {"uris": "http://m.example/debian", "suites": "trixie",
      "components": "main contrib non-free"}),
    ("deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main",
     {"uris": "http://m.example/debian", "suites": "trixie", "components": "main"}),
    ("deb [trusted=yes] http://m.example/debian sid main",
     {"uris": "http://m.example/debian", "suites": "sid", "components": "main"}),
    ("deb [ arch=amd64 ] http://m.example/debian sid main",
     {"uris": "http://m.example/debian", "suites": "sid", "components": "main"}),
    ("  deb   http://m.example/debian   bookworm   main   # a comment # and more",
     {"uris": "http://m.example/debian", "suites": "bookworm", "components": "main"}),
    # Three words are the least: no component.
    ("deb http://m.example/debian trixie",
     {"uris": "http://m.example/debian", "suites": "trixie", "components": ""}),
])
def test_a_one_line_entry_as_deb822_fields(line, entry):
    assert vk_host.one_line_entries(line + "\n") == [{"types": "deb", **entry}]


@pytest.mark.parametrize("line", [
    "deb-src http://m.example/debian trixie main",     # source packages
    "# deb http://m.example/debian trixie main",       # commented out
    "deb http://m.example/debian",                     # no suite
    "deb [arch=amd64] http://m.example/debian",        # options, then no suite
    "deb [arch=amd64 http://m.example/debian trixie main",  # options never closed
    "deb [arch=amd64",
    "debian http://m.example/debian trixie main",
    "",
])
def test_a_line_that_is_no_binary_entry_gives_none(line):
    assert vk_host.one_line_entries(line) == []


def test_one_line_entries_keep_their_order():
    text = ("deb http://one.example/debian trixie main\n"
            "deb-src http://src.example/debian trixie main\n"
            "deb http://two.example/debian sid main\n")
    assert [e["uris"] for e in vk_host.one_line_entries(text)] == [
        "http://one.example/debian", "http://two.example/debian"]


@pytest.mark.parametrize("entry, archive", [
    ({"types": "deb", "suites": "trixie", "components": "main"}, True),
    ({"types": "deb-src deb", "suites": "trixie", "components": "contrib main"}, True),
    ({"types": "deb", "suites": "trixie", "components": "main", "enabled": "yes"}, True),
    ({"types": "deb", "suites": "trixie", "components": "main", "enabled": "no"}, False),
    ({"types": "deb-src", "suites": "trixie", "components": "main"}, False),
    ({"suites": "trixie", "components": "main"}, False),                # no types
    ({"types": "deb", "suites": "trixie", "components": "contrib non-free"}, False),
    ({"types": "deb", "suites": "trixie", "components": "maintenance"}, False),
    ({"types": "deb", "suites": "trixie"}, False),                      # no components
    ({"types": "deb", "suites": "trixie-security", "components": "main"}, False),
    ({"types": "deb", "suites": "bookworm-updates", "components": "main"}, False),
    ({"types": "deb", "suites": "nodistro", "components": "main"}, False),
    ({"types": "deb", "components": "main"}, False),                    # no suites
    ({"types": "deb", "suites": "trixie-updates trixie", "components": "main"}, True),
    ({"types": "debian", "suites": "trixie", "components": "main"}, False),
])
def test_debians_main_archive_is_an_enabled_binary_release_suite_with_main(entry, archive):
    assert vk_host.is_debian_archive(entry) is archive


@pytest.mark.parametrize("suite", sorted(vk_host.DEBIAN_SUITES))
def test_every_release_name_and_alias_is_debians(suite):
    assert vk_host.is_debian_archive({"types": "deb", "suites": suite, "components": "main"})


def test_the_release_names_and_aliases_are_debians_own():
    assert vk_host.DEBIAN_SUITES == {
        "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
        "oldoldstable", "oldstable", "stable", "testing", "unstable"}


def sources(tmp_path, files: dict[str, str]):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    for name, text in files.items():
        (tmp_path / name if name == "sources.list" else d / name).write_text(text)
    return d, tmp_path / "sources.list"


def test_deb822_sources_come_first_in_name_order(tmp_path):
    d, listing = sources(tmp_path, {
        "sources.list": "deb http://list.example/debian trixie main\n",
        "a.list": "deb http://alist.example/debian trixie main\n",
        "z.sources": "Types: deb\nURIs: http://z.example/debian\nSuites: trixie\n"
                     "Components: main\n",
        "b.sources": "Types: deb\nURIs: http://b.example/debian http://b2.example/debian\n"
                     "Suites: trixie\nComponents: main\n"})
    assert vk_host.apt_mirror(d, listing) == "http://b.example/debian"
    (d / "b.sources").unlink()
    assert vk_host.apt_mirror(d, listing) == "http://z.example/debian"


def test_then_sources_list_then_the_list_files_in_name_order(tmp_path):
    d, listing = sources(tmp_path, {
        "sources.list": "deb http://list.example/debian trixie main\n",
        "z.list": "deb http://zlist.example/debian trixie main\n",
        "b.list": "deb http://blist.example/debian trixie main\n",
        "c.sources": "Types: deb\nURIs: http://third.example/x\nSuites: nodistro\n"
                     "Components: main\n"})
    assert vk_host.apt_mirror(d, listing) == "http://list.example/debian"
    listing.unlink()
    assert vk_host.apt_mirror(d, listing) == "http://blist.example/debian"
    (d / "b.list").unlink()
    assert vk_host.apt_mirror(d, listing) == "http://zlist.example/debian"
    # Files of other names are not apt's.
    (d / "z.list").rename(d / "z.list.disabled")
    assert vk_host.apt_mirror(d, listing) is None


def test_an_archive_entry_without_a_uri_is_passed_over(tmp_path):
    d, listing = sources(tmp_path, {
        "a.sources": "Types: deb\nSuites: trixie\nComponents: main\n\n"
                     "Types: deb\nURIs:  \nSuites: trixie\nComponents: main\n\n"
                     "Types: deb\nURIs: http://later.example/debian\nSuites: trixie\n"
                     "Components: main\n"})
    assert vk_host.apt_mirror(d, listing) == "http://later.example/debian"


def test_no_sources_directory_and_unreadable_bytes_are_no_error(tmp_path):
    listing = tmp_path / "sources.list"
    listing.write_bytes(b"# caf\xe9\ndeb http://m.example/debian trixie main\n")
    assert vk_host.apt_mirror(tmp_path / "absent.d", listing) == "http://m.example/debian"
    assert vk_host.apt_mirror(tmp_path / "absent.d", tmp_path / "absent") is None
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.sources").write_bytes(b"Types: deb\nURIs: http://\xff.example/debian\n"
                                  b"Suites: trixie\nComponents: main\n")
    assert vk_host.apt_mirror(d, tmp_path / "absent") == "http://\ufffd.example/debian"


def escaped(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def test_binfmt_line_matches_a_riscv64_elf_header():
    # ELF magic, 64-bit, little-endian, version 1, then e_type EXEC (2) and e_machine
    # EM_RISCV (0xf3); the mask ignores the OS ABI byte and e_type's low bit (EXEC or DYN).
    magic = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\xf3\x00"
    mask = b"\xff" * 7 + b"\x00" + b"\xff" * 8 + b"\xfe\xff\xff\xff"
    assert vk_host.binfmt_line("/usr/libexec/qemu-binfmt/riscv64") == (
        f":qemu-riscv64:M::{escaped(magic)}:{escaped(mask)}:"
        "/usr/libexec/qemu-binfmt/riscv64:F")


def test_binfmt_entry_read_back(tmp_path):
    (tmp_path / "qemu-riscv64").write_text(
        "enabled\ninterpreter /opt/qemu 9/qemu-riscv64-static\nflags: PF\noffset 0\n"
        "magic 7f454c460201010000000000000000000200f300\n")
    assert vk_host.binfmt_entry(tmp_path) == {
        "enabled": "enabled", "interpreter": "/opt/qemu 9/qemu-riscv64-static", "flags": "PF",
        "offset": "0", "magic": "7f454c460201010000000000000000000200f300"}
    (tmp_path / "qemu-riscv64").write_text("disabled\n")
    assert vk_host.binfmt_entry(tmp_path) == {"enabled": "disabled"}
    (tmp_path / "qemu-riscv64").write_text("")
    assert vk_host.binfmt_entry(tmp_path) == {"enabled": ""}
    (tmp_path / "qemu-riscv64").unlink()
    assert vk_host.binfmt_entry(tmp_path) is None
