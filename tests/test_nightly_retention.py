"""Retention of nightly run directories, and their names: real directories, links and files
in tmp_path."""

from __future__ import annotations

from pathlib import Path

from pipeline.nightly.retention import prune, remove_partials, run_stamp


def test_retention_prunes_only_its_own_run_directories_in_run_order(tmp_path):
    nightly = tmp_path / "nightly"
    names = {1: "29991231T000000Z", 2: "20260102T000000Z", 3: "20260103T000000Z",
             4: "20260104T000000Z", 5: "20260105T000000Z", 6: "20260106T000000Z"}
    statuses = {1: "ok", 2: "ok", 3: "failed", 4: "ok", 5: "failed", 6: "ok"}
    for name in names.values():
        (nightly / name).mkdir(parents=True)
        (nightly / name / ".x.partial").write_text("x")
    (nightly / "0-my-notes").mkdir()  # a user's folder
    (nightly / "20250101T000000Z").mkdir()  # a stamp of no run of this database
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (nightly / "20240101T000000Z").symlink_to(outside)
    runs = [{"id": i, "status": statuses[i], "run_dir": str(nightly / names[i])}
            for i in names]
    runs.insert(0, {"id": 0, "status": "ok", "run_dir": str(nightly / "20240101T000000Z")})
    removed = prune(nightly, 2, nightly / names[6], runs)
    # Completed: 1 (future-dated name, oldest id), 2, 4, 6; keep 2: runs 4 and 6. Failed runs
    # do not count; failed run 5 is newer than run 4, so it stays; failed 3 goes.
    assert sorted(p.name for p in removed) == sorted(names[i] for i in (1, 2, 3))
    assert sorted(p.name for p in nightly.iterdir()) == sorted(
        [names[4], names[5], names[6], "0-my-notes", "20250101T000000Z", "20240101T000000Z"])
    assert outside.is_dir() and (nightly / "20240101T000000Z").is_symlink()


def test_retention_always_keeps_the_current_run_even_when_it_failed(tmp_path):
    nightly = tmp_path / "nightly"
    runs = [{"id": i, "status": s, "run_dir": str(nightly / f"2026010{i}T000000Z")}
            for i, s in ((1, "ok"), (2, "ok"), (3, "failed"))]
    for r in runs:
        Path(r["run_dir"]).mkdir(parents=True)
    removed = prune(nightly, 1, nightly / "20260103T000000Z", runs)
    assert [p.name for p in removed] == ["20260101T000000Z"]
    assert sorted(p.name for p in nightly.iterdir()) == ["20260102T000000Z", "20260103T000000Z"]


def test_retention_keeps_only_the_last_failed_runs_when_every_run_fails(tmp_path):
    nightly = tmp_path / "nightly"
    runs = [{"id": i, "status": "failed", "run_dir": str(nightly / f"2026010{i}T000000Z")}
            for i in range(1, 6)]
    for r in runs:
        Path(r["run_dir"]).mkdir(parents=True)
    removed = prune(nightly, 2, nightly / "20260105T000000Z", runs)
    assert sorted(p.name for p in removed) == [f"2026010{i}T000000Z" for i in (1, 2, 3)]


def test_run_directories_are_named_by_their_utc_start_and_never_reuse_a_name(tmp_path):
    first = run_stamp("2026-12-01T02:00:00Z", tmp_path)
    assert first == tmp_path / "20261201T020000Z"
    first.mkdir()
    (tmp_path / "20261201T020000Z-1").symlink_to(tmp_path / "elsewhere")  # a dangling link
    assert run_stamp("2026-12-01T02:00:00Z", tmp_path) == tmp_path / "20261201T020000Z-2"


def test_remove_partials_removes_only_temporary_files(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".m.tflite.ab12.partial").write_bytes(b"x")
    (tmp_path / "models" / ".m.h5.cd34.partial.h5").write_bytes(b"x")
    (tmp_path / "models" / "m.tflite").write_bytes(b"keep")
    (tmp_path / "models" / "notes.partial.txt").write_bytes(b"keep: not hidden")
    assert remove_partials(tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m.tflite",
                                                                        "notes.partial.txt"]
