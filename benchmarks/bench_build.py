"""Build benchmarks, all measured in this one run, printed as a table.

1. no-op `doit` wall time (median of N) on a built project, as a ratio to bare doit on an
   empty dodo.py (the floor any doit project pays), the two measured alternately in this run
   so a busy machine slows both alike; goal <= 1.4x (issue 22);
2. cold build time of the whole default build (`doit`, params.toml) from a local mirror;
3. training time and test accuracy of mnist_cnn with the pipeline's params next to the K1
   tutorial's recipe (same CNN, 5 epochs, batch 32, constant Adam 1e-3) trained here on the
   same data split through the same code path.

Usage: python benchmarks/bench_build.py [--mirror DIR_OR_URL] [--repeats 9]
                                        [--only noop|builds]
The mirror defaults to $PIPELINE_MIRROR, else ../shared/datasets/mnist beside the
repository. `--only noop` measures 1. alone, on a project built with the smoke preset (the same task graph, built in
about a minute instead of retraining everything). `--only builds` times `doit list` on
params files of 100, 300 and 1,000 builds (the cap) and prints the time per build: it must
stay flat (loading was quadratic: 3,000 builds took 6 s where 1,000 took 1.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.project import copy_project  # noqa: E402  (stdlib only: no pytest needed)

RECIPE_TRAIN = """[train]
epochs = 5
batch_size = 32
learning_rate = 0.001
lr_schedule = "constant"
validation_fraction = 0.1
max_train_samples = 0
seed = 1234
"""


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", help="MNIST mirror, a directory or URL (default: "
                        "$PIPELINE_MIRROR, else ../shared/datasets/mnist beside the repository)",
                        default=os.environ.get("PIPELINE_MIRROR")
                        or str(REPO.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--only", choices=["noop", "builds"],
                        help="noop: only the no-op ratio, on a smoke-preset build; builds: "
                        "`doit list` time against the number of builds")
    args = parser.parse_args()
    if args.only == "builds":
        print_rows(many_builds(args.repeats))
        return

    if "://" not in args.mirror and not Path(args.mirror).is_dir():
        sys.exit(f"error: no MNIST mirror at {args.mirror}: give --mirror DIR_OR_URL or "
                 "PIPELINE_MIRROR (a directory or URL holding the 4 MNIST .gz files)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_MIRROR=args.mirror, PIPELINE_OFFLINE="1")
    if args.only == "noop":
        env["PIPELINE_PARAMS"] = "params/smoke.toml"
    doit = [sys.executable, "-m", "doit"]
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project", quick_board=False)
        cold, _ = timed(doit, project, env)
        bare_dir = Path(tmp) / "bare"
        bare_dir.mkdir()
        (bare_dir / "dodo.py").write_text("def task_nothing():\n    return {'actions': []}\n")
        timed(doit, bare_dir, env)  # first run writes doit's database: not a no-op
        noop, bare = [], []
        for _ in range(args.repeats):
            noop.append(timed(doit, project, env)[0])
            bare.append(timed(doit, bare_dir, env)[0])
        noop_rows = [
            ("no-op doit, median of %d" % len(noop), f"{statistics.median(noop):.3f} s",
             f"min {min(noop):.3f} s, max {max(noop):.3f} s"),
            ("bare doit (empty dodo.py), median", f"{statistics.median(bare):.3f} s",
             f"min {min(bare):.3f} s, max {max(bare):.3f} s"),
            ("no-op / bare doit", f"{statistics.median(noop) / statistics.median(bare):.2f}x",
             "goal: <= 1.4x"),
        ]
        if args.only == "noop":
            print_rows(noop_rows)
            return

        art = project / "artifacts"
        ours = json.loads((art / "models" / "mnist_cnn" / "history.json").read_text())
        ours_acc = next(v["accuracy"] for v in json.loads(
            (art / "reports" / "mnist_cnn" / "accuracy.json").read_text())["variants"]
            if v["name"] == "keras")

        # params.toml holds only changes (none by default): the recipe's [train] is the file.
        recipe_params = Path(tmp) / "recipe.toml"
        recipe_params.write_text(RECIPE_TRAIN + "\n")
        data = art / "data" / "mnist" / "mnist.npz"
        recipe_h5 = Path(tmp) / "recipe" / "recipe.h5"
        _, out = timed([sys.executable, "-m", "pipeline.stages.train", "cnn", str(data), str(recipe_h5),
                        "--params", str(recipe_params)], project, env)
        recipe = json.loads(out.strip().splitlines()[-1])

        from pipeline.stages.evaluate import keras_predict
        from pipeline.stages.preprocess import load_arrays

        test = load_arrays(data)
        recipe_acc = float((keras_predict(recipe_h5, test["x_test"], 500)
                            == test["y_test"]).mean())

    ratio = ours["train_seconds"] / recipe["train_seconds"]
    print_rows(noop_rows + [
        ("cold build, default params, local mirror", f"{cold:.1f} s",
         "download..bench:local, 2 builds"),
        ("train mnist_cnn, pipeline params", f"{ours['train_seconds']:.1f} s",
         f"test accuracy {100 * ours_acc:.2f} %"),
        ("train mnist_cnn, tutorial recipe", f"{recipe['train_seconds']:.1f} s",
         f"test accuracy {100 * recipe_acc:.2f} %"),
        ("pipeline / recipe training time", f"{ratio:.2f}x",
         "goal: <= 0.5x at >= 99.00 %"),
    ])


def many_builds(repeats: int, counts: tuple[int, ...] = (100, 300, 1000)) -> list[tuple]:
    """`doit list` wall time (median of `repeats`) for params files of `counts` builds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project", quick_board=False)
        smoke = (project / "params" / "smoke.toml").read_text()
        head = smoke + "\n"  # the preset has no [[builds]] of its own (the defaults)
        previous = None
        for count in counts:
            params = project / f"builds_{count}.toml"
            params.write_text(head + "".join(
                f'[[builds]]\nname = "b{i}"\ndataset = "mnist"\nmodel = "cnn"\n\n'
                for i in range(count)))
            env.update(PIPELINE_PARAMS=str(params), PIPELINE_ARTIFACTS=str(Path(tmp) / "art"))
            median = statistics.median(
                timed([sys.executable, "-m", "doit", "list"], project, env)[0]
                for _ in range(repeats))
            # The cost of one more build, from the previous row: constant when loading is
            # linear in the builds, growing when it is quadratic.
            note = "" if previous is None else (
                f"{1000 * (median - previous[1]) / (count - previous[0]):.2f} ms per added "
                f"build since {previous[0]:,}")
            rows.append((f"doit list, {count:,} builds, median of {repeats}",
                         f"{median:.2f} s", note))
            previous = (count, median)
    return rows


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
