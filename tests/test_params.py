import dataclasses
import json
import math
import tomllib
import typing

import pytest

from pipeline.core.params import (Build, Params, ParamsError, load_params, parse_params,
                                  rule_of, sections)
from tests.conftest import REPO, copy_project, run_doit
from tests.project import edit_params


def full_doc():
    """Every key written out with its default, as a user's complete file would be."""
    params = Params()
    out = {name: {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(getattr(params, name)).items()}
           for name in sections()}
    out["builds"] = [{"name": b.name, "dataset": b.dataset, "model": b.model}
                     for b in params.builds]
    return out


def doc(path=None):
    return full_doc() if path is None else tomllib.loads(path.read_text())


def test_shipped_params_load():
    params = load_params(REPO / "params.toml")
    assert params == Params(base_dir=str(REPO))  # the shipped file changes nothing
    assert [b.name for b in params.builds] == ["mnist_cnn", "mnist_mlp"]
    assert params.datasets == ("mnist",)
    assert params.convert.int8_io == "int8"
    assert params.convert.onnx is True  # ONNX variants by default
    smoke = load_params(REPO / "params" / "smoke.toml")
    assert smoke.train.max_train_samples > 0 and smoke.train.epochs == 1


def test_params_are_frozen():
    params = load_params(REPO / "params.toml")
    with pytest.raises(AttributeError):
        params.train.epochs = 3


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["train"].update(epochz=3), "train.epochz: unknown key"),
    (lambda d: d.update(extra={}), "extra: unknown section"),
    (lambda d: d["train"].update(epochs="2"), "train.epochs: must be int, got str"),
    (lambda d: d["train"].update(epochs=True), "train.epochs: must be int, got bool"),
    (lambda d: d["train"].update(epochs=0), "train.epochs: must be in 1..1000"),
    (lambda d: d["convert"].update(int8_io="int16"),
     "convert.int8_io: must be one of ['int8', 'uint8'], got 'int16'"),
    (lambda d: d["convert"].update(extra_variants=["bf16"]),
     "convert.extra_variants: item 'bf16': must be one of ['float16', 'dynamic_range']"),
    (lambda d: d["convert"].update(onnx="yes"), "convert.onnx: must be bool, got str"),
    (lambda d: d["evaluate"].update(max_drift_pt=-1), "evaluate.max_drift_pt: must be >= 0"),
    (lambda d: d["builds"][0].update(dataset="cifar"), "unknown dataset 'cifar'"),
    (lambda d: d["builds"][0].update(model="resnet"), "unknown model 'resnet'"),
    (lambda d: d["builds"][1].update(name="mnist_cnn"), "duplicate build names"),
    (lambda d: d.update(builds=[]), "declare at least one [[builds]]"),
    (lambda d: d["analysis"].update(max_per_class=0), "analysis.max_per_class: must be in"),
    (lambda d: d["layers"].update(sample=5), "layers.sample: unknown key"),
    (lambda d: d["builds"][0].update(float_layers="dense"), "builds.float_layers: must be a list"),
    (lambda d: d["builds"][0].update(float_layers=["a", "a"]),
     "builds[mnist_cnn].float_layers: items must be distinct, repeated: ['a']"),
    (lambda d: d["builds"][0].update(float_layers=[""]),
     "builds[mnist_cnn].float_layers: list items must not be empty"),
    (lambda d: d["builds"][0].pop("model"), "builds.model: missing"),
    (lambda d: d["builds"][0].update(float_layer=["a"]), "builds.float_layer: unknown key"),
    (lambda d: d["nightly"].update(min_accuracy=0.9), "nightly.min_accuracy: unknown key"),
    (lambda d: d["nightly"].update(min_accuracy_int8=97), "nightly.min_accuracy_int8: must be "
                                                          "in [0.0, 1.0] (a fraction), got 97"),
])
def test_bad_params_are_rejected_naming_the_key(mutate, message):
    d = doc()
    mutate(d)
    with pytest.raises(ParamsError) as err:
        parse_params(d)
    assert message in str(err.value)


def test_int_is_accepted_for_float():
    d = doc()
    d["train"]["learning_rate"] = 0  # still rejected by range, but as a value, not a type
    with pytest.raises(ParamsError, match="train.learning_rate: must be in"):
        parse_params(d)
    d["evaluate"]["max_drift_pt"] = 2
    d["train"]["learning_rate"] = 0.001
    assert parse_params(d).evaluate.max_drift_pt == 2.0


def test_float_layers_are_optional_per_build_and_add_the_selective_variant():
    from pipeline.stages.convert import variant_names

    d = doc()
    d["builds"][0]["float_layers"] = ["cnn_1/classes_1/MatMul;cnn_1/classes_1/BiasAdd"]
    params = parse_params(d)
    cnn, mlp = params.builds
    assert cnn.float_layers == ("cnn_1/classes_1/MatMul;cnn_1/classes_1/BiasAdd",)
    assert mlp.float_layers == ()
    onnx = ["onnx_float32", "onnx_int8", "onnx_int8_tflite"]
    assert variant_names(params.convert, cnn.float_layers) == ["float32", "int8",
                                                               "int8_selective", *onnx]
    assert variant_names(params.convert, mlp.float_layers) == ["float32", "int8", *onnx]


def test_fashion_mnist_is_a_valid_dataset_for_any_build():
    d = doc()
    d["builds"].append({"name": "fashion_cnn", "dataset": "fashion_mnist", "model": "cnn"})
    assert parse_params(d).datasets == ("mnist", "fashion_mnist")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(ParamsError, match="not valid TOML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.toml")


def test_doit_refuses_bad_params_before_any_work(tmp_path):
    project = copy_project(tmp_path / "p")
    edit_params(project / "params" / "smoke.toml", {"train.epoch": 3})
    proc = run_doit(project)
    assert proc.returncode != 0
    assert "train.epoch: unknown key" in proc.stderr
    assert not (project / "artifacts").exists()


def test_doit_refuses_a_default_board_missing_from_the_inventory(tmp_path):
    project = copy_project(tmp_path / "p")
    smoke = project / "params" / "smoke.toml"
    edit_params(smoke, {"bench.default_boards": ["k9"]})
    proc = run_doit(project)
    assert proc.returncode != 0
    assert "bench.default_boards names ['k9']" in proc.stderr


def test_builds_are_capped_and_looked_up_by_name():
    from pipeline.core.params import MAX_BUILDS

    d = doc()
    template = d["builds"][0]
    d["builds"] = [{**template, "name": f"b{i}"} for i in range(MAX_BUILDS)]
    params = parse_params(d)
    assert params.build("b0") is params.builds[0]
    assert params.build(f"b{MAX_BUILDS - 1}") is params.builds[-1]
    d["builds"].append({**template, "name": "one_too_many"})
    with pytest.raises(ParamsError, match=f"builds: 1,001 .*at most {MAX_BUILDS:,} per params"):
        parse_params(d)
DECLARED = {"name": "bars", "format": "npz", "files": ["data/bars.npz"], "sha256": ["a" * 64],
            "class_names": ["x", "y"], "framing": "object"}


def test_declared_dataset_and_user_models(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kws.py").write_text("def build(s, n): pass\n")
    (tmp_path / "given.h5").write_bytes(b"")
    d = doc()
    d["datasets"] = [dict(DECLARED)]
    d["builds"] = [{"name": "own", "dataset": "bars", "model": "models/kws.py:build"},
                   {"name": "given", "dataset": "mnist", "model": "given.h5",
                    "fine_tune": False, "max_parameters": 10}]
    params = parse_params(d, tmp_path)
    spec = params.dataset_specs()["bars"]
    assert spec.format == "npz" and spec.archive.name == "bars.npz"
    assert spec.archive.location == str(tmp_path / "data") and spec.framing == "object"
    assert params.datasets == ("bars", "mnist")
    assert params.model_source("own").file == tmp_path / "models" / "kws.py"
    assert params.model_source("given").kind == "saved"
    assert params.build("given").max_parameters == 10


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["datasets"][0].update(format="csv"), r"datasets\[bars\].format: must be one of"),
    (lambda d: d["datasets"][0].update(files=["a.npz", "b.npz"]),
     r"datasets\[bars\].files: format 'npz' takes 1 file"),
    (lambda d: d["datasets"][0].update(format="idx"),
     r"takes 4 file\(s\) \(train images, train labels, test images, test labels"),
    (lambda d: d["datasets"][0].update(sha256=["abc"]), "'abc' is not a SHA-256"),
    (lambda d: d["datasets"][0].update(sha256=[]), "1 file.s., 0 checksum"),
    (lambda d: d["datasets"][0].update(class_names=["x"]), "at least 2 distinct"),
    (lambda d: d["datasets"][0].update(framing="centre"), r"framing: must be one of \['digit'"),
    (lambda d: d["datasets"][0].update(name="mnist"), "'mnist' is a built-in dataset"),
    (lambda d: d["datasets"][0].update(labels=[]), r"datasets.labels: unknown key"),
    (lambda d: d["builds"][0].update(dataset="barz"),
     r"unknown dataset 'barz'; choose from \['bars', 'fashion_mnist', 'mnist'\]"),
    (lambda d: d["builds"][0].update(model="models/none.py:build"), r"builds\[mnist_cnn\].model: "
     r"'models/none.py:build': no file"),
    (lambda d: d["builds"][0].update(fine_tune=False), r"builds\[mnist_cnn\].fine_tune: false "
     "converts a saved model"),
    (lambda d: d["builds"][0].update(max_parameters=0), "max_parameters: must be >= 1"),
])
def test_bad_declarations_name_the_key(mutate, message, tmp_path):
    d = doc()
    d["datasets"] = [dict(DECLARED)]
    mutate(d)
    with pytest.raises(ParamsError, match=message):
        parse_params(d, tmp_path)


# --- boundaries generated from the schema: a new key or rule gets these without anyone
# remembering. Each case is (value, accepted), computed here from the rule's bounds and
# choices by the test's own arithmetic, not by Rule.allows.

def _number_type(hint):
    item = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
    return item if item in (int, float) else None


def _beyond(value, kind, direction):
    """The next representable value past `value` in `direction` (+1 or -1)."""
    return value + direction if kind is int else math.nextafter(float(value), direction * math.inf)


def boundary_cases(rule, kind):
    """(value, accepted) at every bound of `rule` for a number field of type `kind`."""
    for bound, is_open, outward in ((rule.low, rule.low_open, -1),
                                    (rule.high, rule.high_open, +1)):
        if bound is None:
            continue
        yield bound, not is_open                                   # the limit itself
        yield _beyond(bound, kind, outward), False                 # one step beyond
        yield _beyond(bound, kind, -outward), True                 # one step inside
    if rule.choices:
        yield from ((choice, True) for choice in rule.choices)
        yield "not_" + str(rule.choices[0]), False


def _inside(rule, value):
    """Whether `value` satisfies `rule`'s bounds, written out independently of Rule.allows."""
    low_ok = rule.low is None or (value > rule.low if rule.low_open else value >= rule.low)
    high_ok = rule.high is None or (value < rule.high if rule.high_open else value <= rule.high)
    return low_ok and high_ok


def schema_fields():
    """(section, field, type hint) for every key of every [section] and of a [[builds]] entry."""
    for name, cls in sections().items():
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            yield pytest.param(name, spec, hints[spec.name], id=f"{name}.{spec.name}")
    hints = typing.get_type_hints(Build)
    for spec in dataclasses.fields(Build):
        if spec.default is not dataclasses.MISSING:
            yield pytest.param("builds", spec, hints[spec.name], id=f"builds.{spec.name}")


def parse_one(section, key, value):
    """Params with one key set (in the first build for builds.*); the rest are defaults."""
    if section == "builds":
        return parse_params({"builds": [{"name": "b", "dataset": "mnist", "model": "cnn",
                                         key: value}]}).builds[0]
    return getattr(parse_params({section: {key: value}}), section)


def shown_key(section, key):
    return f"builds[b].{key}" if section == "builds" else f"{section}.{key}"


@pytest.mark.parametrize("section, spec, hint", list(schema_fields()))
def test_every_rule_holds_at_its_boundaries(section, spec, hint):
    rule, kind = rule_of(spec), _number_type(hint)
    listed = typing.get_origin(hint) is tuple
    cases = list(boundary_cases(rule, kind))
    for value, accepted in cases:
        given = [value] if listed else value
        if accepted:
            got = getattr(parse_one(section, spec.name, given), spec.name)
            assert got == ((value,) if listed else value)
        else:
            with pytest.raises(ParamsError) as err:
                parse_one(section, spec.name, given)
            message = str(err.value)
            assert shown_key(section, spec.name) in message and rule.describe() in message
            assert repr(value) in message
    if kind is not None and rule.choices is None:
        # Zero: accepted exactly when the bounds hold it.
        zero = [0] if listed else 0
        if _inside(rule, 0):
            assert getattr(parse_one(section, spec.name, zero), spec.name) == (
                (0,) if listed else 0)
        else:
            with pytest.raises(ParamsError, match=shown_key(section, spec.name).replace(
                    "[", r"\[").replace("]", r"\]")):
                parse_one(section, spec.name, zero)
    if rule.low is not None or rule.high is not None or rule.choices:
        assert cases, f"{section}.{spec.name}: a rule without boundary cases"


@pytest.mark.parametrize("section, spec, hint", list(schema_fields()))
def test_every_key_refuses_the_wrong_type_and_a_bool_for_a_number(section, spec, hint):
    kind = _number_type(hint)
    listed = typing.get_origin(hint) is tuple
    wrong = [True] if (kind and listed) else True if kind else ({"a": 1} if hint is str else "x")
    if hint is bool:
        wrong = 1  # a number is not a bool either
    with pytest.raises(ParamsError) as err:
        parse_one(section, spec.name, wrong)
    assert shown_key(section, spec.name).replace("builds[b]", "builds") in str(err.value)
    assert "must be" in str(err.value)


DISTINCT_LISTS = [p for p in schema_fields()
                  if typing.get_origin(p.values[2]) is tuple and rule_of(p.values[1]).distinct]


def test_the_schema_has_lists_of_distinct_items():
    assert DISTINCT_LISTS  # so the test below is not silently empty


@pytest.mark.parametrize("section, spec, hint", DISTINCT_LISTS)
def test_every_list_with_distinct_items_refuses_a_duplicate(section, spec, hint):
    rule = rule_of(spec)
    item = rule.choices[0] if rule.choices else (1 if _number_type(hint) else "a")
    if section == "bench":
        item = "local"
    with pytest.raises(ParamsError, match="items must be distinct"):
        parse_one(section, spec.name, [item, item])


@pytest.mark.parametrize("section, spec, hint", list(schema_fields()))
def test_every_default_satisfies_its_own_type_and_rule_and_says_what_it_means(section, spec,
                                                                               hint):
    default = spec.default
    written = list(default) if isinstance(default, tuple) else default
    assert getattr(parse_one(section, spec.name, written), spec.name) == default
    assert type(default) is (tuple if typing.get_origin(hint) is tuple else hint)
    assert spec.metadata.get("doc"), f"{section}.{spec.name}: say what the key means"


@pytest.mark.parametrize("section", list(sections()))
def test_every_section_refuses_an_unknown_key(section):
    with pytest.raises(ParamsError, match=rf"{section}\.nonsense: unknown key"):
        parse_params({section: {"nonsense": 1}})


# --- defaults in one place, files with only their changes, one-off overrides --------------

def test_a_file_with_one_key_takes_every_other_default(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[train]\nepochs = 3\n")
    params = load_params(path)
    assert params.train.epochs == 3
    assert dataclasses.replace(params.train, epochs=Params().train.epochs) == Params().train
    assert [b.name for b in params.builds] == ["mnist_cnn", "mnist_mlp"]
    assert params.convert == Params().convert and params.nightly == Params().nightly
    path.write_text("")
    assert load_params(path) == Params(base_dir=str(tmp_path))


def test_smoke_holds_only_its_differences():
    smoke = tomllib.loads((REPO / "params" / "smoke.toml").read_text())
    defaults = full_doc()
    repeated = [f"{s}.{k}" for s, table in smoke.items() if isinstance(table, dict)
                for k, v in table.items() if defaults[s][k] == v]
    assert not repeated, f"params/smoke.toml repeats defaults: {repeated}"
    shipped = tomllib.loads((REPO / "params.toml").read_text())
    assert shipped == {}, "params.toml holds only what a user changes; the defaults are changed"


def test_resolved_params_are_unchanged_in_json_for_config_changed(tmp_path):
    """doit's config_changed hashes each section's JSON: a default written as 150 where the
    file said 150.0 would rerun tasks. Defaults of float keys are floats."""
    path = tmp_path / "p.toml"
    path.write_text(json.dumps(1) and "[bench]\nmax_age_hours = 24\n[download]\ntimeout_s = 60\n")
    given, default = load_params(path), Params()
    for name in sections():
        assert json.dumps(dataclasses.asdict(getattr(given, name)), sort_keys=True) == \
            json.dumps(dataclasses.asdict(getattr(default, name)), sort_keys=True)


@pytest.mark.parametrize("text, check", [
    ("train.epochs=1;convert.onnx=false",
     lambda p: p.train.epochs == 1 and p.convert.onnx is False),
    (" convert.int8_io = uint8 ; ", lambda p: p.convert.int8_io == "uint8"),
    ('convert.extra_variants=["float16"]', lambda p: p.convert.extra_variants == ("float16",)),
    ("evaluate.max_drift_pt=2", lambda p: p.evaluate.max_drift_pt == 2.0),
    ("", lambda p: p == load_params(REPO / "params" / "smoke.toml")),
])
def test_override_sets_keys_over_the_file(text, check):
    params = load_params(REPO / "params" / "smoke.toml", text)
    assert check(params)
    assert params.train.max_train_samples == 3000  # the file still counts


@pytest.mark.parametrize("text, message", [
    ("train.epochs=abc", "PIPELINE_SET: train.epochs: must be int, got str 'abc'"),
    ("train.epochs=true", "PIPELINE_SET: train.epochs: must be int, got bool"),
    ("train.epochs=0", "PIPELINE_SET: train.epochs: must be in 1..1000"),
    ("train.epoch=1", "PIPELINE_SET: train.epoch: unknown key"),
    ("trian.epochs=1", "PIPELINE_SET: trian: unknown section"),
    ("train.epochs", "PIPELINE_SET: 'train.epochs': write section.key=value"),
    ("epochs=1", "PIPELINE_SET: 'epochs=1': write section.key=value"),
    ("convert.onnx=1", "PIPELINE_SET: convert.onnx: must be bool, got int"),
])
def test_override_refuses_naming_the_variable_and_key(text, message):
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.toml", text)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_reference_prints_every_key_with_its_resolved_value(capsys):
    from pipeline.core.params import main

    assert main(["--params", str(REPO / "params" / "smoke.toml"),
                 "--set", "train.epochs=7"]) == 0
    text = capsys.readouterr().out
    printed = parse_params(tomllib.loads(text))  # the printout is a complete params file
    wanted = load_params(REPO / "params" / "smoke.toml", "train.epochs=7")
    assert dataclasses.replace(printed, base_dir=wanted.base_dir) == wanted
    assert "epochs = 7" in text and "# Passes over the training images. Must be in 1..1000." \
        in text
    # A key without a rule (a bool) gets its doc alone, no "Must be" clause.
    lines = text.splitlines()
    doc_line = lines[lines.index("tensorboard = false") - 1]
    assert doc_line.startswith("# Write TensorBoard logs") and doc_line.endswith(
        "Does not change the trained weights.")
    assert main(["--params", str(REPO / "params.toml"), "--set", "train.epochs=0"]) == 2
    assert "error: bad params: PIPELINE_SET: train.epochs: must be in 1..1000" in \
        capsys.readouterr().err


@pytest.mark.parametrize("value", [
    'C:\\data\\new', "it's", 'say "hi"', "both ' and \"", "line\nbreak", "é", "",
    float("inf"), float("-inf"), 0.1, 1e-300, -7, True, False, ("a\\b", 2, [0.5, False])])
def test_toml_value_reads_back_as_the_same_value_in_tomllib(value):
    """Strings with backslashes, quotes and a newline (which Python's repr writes as TOML of
    other text), infinities (which JSON writes as no TOML at all), nested lists: tomllib's
    reading of the text is the value."""
    from pipeline.core.params_cli import toml_value

    read = tomllib.loads(f"v = {toml_value(value)}")["v"]
    expected = [list(v) if isinstance(v, list) else v for v in value] \
        if isinstance(value, tuple) else value
    assert read == expected and type(read) is type(expected)


# --- every refusal of a declaration, whole: the key it names and what it says (a message
# that lost its key or its reason is a bug a user meets first).

HEX = "0123456789abcdef" * 4   # 64 lowercase hex digits, by hand


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["datasets"][0].update(name="Bars"),
     "datasets.name: 'Bars' must use only a-z, 0-9 and _ (it names files and tasks)"),
    (lambda d: d["datasets"][0].update(name="mnist"),
     "datasets[mnist].name: 'mnist' is a built-in dataset; choose another name"),
    (lambda d: d["datasets"][0].update(files=["a.npz", "b.npz"], sha256=[HEX, HEX]),
     "datasets[bars].files: format 'npz' takes 1 file(s) (holding x_train, y_train, x_test, "
     "y_test), got 2"),
    (lambda d: d["datasets"][0].update(format="idx"),
     "datasets[bars].files: format 'idx' takes 4 file(s) (train images, train labels, test "
     "images, test labels, in that order), got 1"),
    (lambda d: d["datasets"][0].update(format="idx", files=["a", "b", "c", "b"]),
     "datasets[bars].files: file names must be distinct and non-empty, got "
     "['a', 'b', 'c', 'b']"),
    (lambda d: d["datasets"][0].update(sha256=[HEX, HEX]),
     "datasets[bars].sha256: one SHA-256 per file: 1 file(s), 2 checksum(s)"),
    (lambda d: d["datasets"][0].update(sha256=[HEX.upper()]),
     f"datasets[bars].sha256: {HEX.upper()!r} is not a SHA-256 (64 lowercase hex digits; "
     "`sha256sum FILE`)"),
    (lambda d: d["datasets"][0].update(sha256=[HEX[:63]]),
     f"datasets[bars].sha256: {HEX[:63]!r} is not a SHA-256 (64 lowercase hex digits; "
     "`sha256sum FILE`)"),
    (lambda d: d["datasets"][0].update(class_names=["x", "x"]),
     "datasets[bars].class_names: at least 2 distinct, non-empty names (label i is "
     "class_names[i])"),
    (lambda d: d["datasets"][0].update(class_names=["x", ""]),
     "datasets[bars].class_names: at least 2 distinct, non-empty names (label i is "
     "class_names[i])"),
    (lambda d: d["datasets"][0].update(framing="centre"),
     "datasets[bars].framing: must be one of ['digit', 'object'], got 'centre'"),
    (lambda d: d["datasets"][0].update(format="csv"),
     "datasets[bars].format: must be one of ['idx', 'npz'], got 'csv'"),
    (lambda d: d.update(datasets={"name": "bars"}), "datasets: must be [[datasets]] tables"),
    (lambda d: d["datasets"].append(dict(DECLARED)),
     "datasets.name: duplicate dataset names in ['bars', 'bars']"),
    (lambda d: d.update(train=3), "train: must be a table"),
    (lambda d: d.update(builds={"name": "x"}),
     "builds: declare at least one [[builds]] entry (or none at all for the default builds)"),
    (lambda d: d["builds"][1].update(name="mnist_cnn"),
     "builds.name: duplicate build names in ['mnist_cnn', 'mnist_cnn']"),
    (lambda d: d["builds"][0].update(name="CNN"),
     "builds.name: 'CNN' must use only a-z, 0-9 and _ (it names files and tasks)"),
    (lambda d: d["builds"][0].update(dataset="barz"),
     "builds[mnist_cnn].dataset: unknown dataset 'barz'; choose from ['bars', "
     "'fashion_mnist', 'mnist'] (or declare it in a [[datasets]] table)"),
    (lambda d: d["builds"][0].update(float_layers=["a", 3]),
     "builds.float_layers: must be str, got int 3"),
    (lambda d: d["convert"].update(extra_variants="float16"),
     "convert.extra_variants: must be a list, got str"),
    (lambda d: d["convert"].update(extra_variants=["float16", "bf16"]),
     "convert.extra_variants: item 'bf16': must be one of ['float16', 'dynamic_range'], "
     "got 'bf16'"),
])
def test_each_declaration_refusal_names_its_key_and_says_why(mutate, message, tmp_path):
    d = doc()
    d["datasets"] = [dict(DECLARED)]
    mutate(d)
    with pytest.raises(ParamsError) as err:
        parse_params(d, tmp_path)
    assert str(err.value) == message


def test_a_declared_datasets_files_are_fetched_from_their_urls_folder_or_their_directory(
        tmp_path, monkeypatch):
    """Each file's name and folder against urllib's and os.path's reading of the same text."""
    import os.path
    import posixpath
    import urllib.parse

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # Each kind of location once: http, file://, relative, home; a name ending in X (which
    # a stray rstrip of other characters than "/" would cut).
    files = ["http://example.org/d/v2/TRAIN-IMAGES.IDX", "file:///srv/d/train-labels.gz",
             "data/t10k-images.gz", "~/mnist/t10k-labels.gz"]
    digests = [HEX, HEX[::-1], "a" * 64, "b" * 64]
    d = doc()
    d["datasets"] = [{**DECLARED, "format": "idx", "files": files, "sha256": digests}]
    spec = parse_params(d, tmp_path).dataset_specs()["bars"]
    assert (spec.name, spec.mirrors, spec.class_names, spec.framing, spec.declared,
            spec.format) == ("bars", (), ("x", "y"), "object", True, "idx")
    for remote, text, digest in zip(spec.files, files, digests):
        url = urllib.parse.urlsplit(text)
        if url.scheme:
            name = posixpath.basename(url.path)
            folder = text[:len(text) - len(name)]
        else:
            full = os.path.join(tmp_path, os.path.expanduser(text))
            name, folder = os.path.basename(full), os.path.dirname(full)
        assert (remote.name, remote.location, remote.sha256) == (name, folder, digest)
    assert [r.name for r in (spec.train_images, spec.train_labels, spec.test_images,
                             spec.test_labels)] == [posixpath.basename(f) for f in files]

    # A trailing slash: the file is bars.npz in d/ (not bars.npz/bars.npz, which the folder
    # once was); an absolute local path is itself, whatever the params file's directory.
    d["datasets"] = [{**DECLARED, "files": ["https://example.org/d/bars.npz/"]}]
    spec = parse_params(d, tmp_path).dataset_specs()["bars"]
    assert (spec.name, spec.mirrors, spec.class_names, spec.framing, spec.declared,
            spec.format) == ("bars", (), ("x", "y"), "object", True, "npz")
    assert (spec.archive.name, spec.archive.location, spec.archive.sha256) == (
        "bars.npz", "https://example.org/d/", "a" * 64)
    assert spec.files == (spec.archive,)
    d["datasets"] = [{**DECLARED, "files": ["/srv/abs/bars.npz"]}]
    archive = parse_params(d, tmp_path).dataset_specs()["bars"].archive
    assert (archive.name, archive.location) == ("bars.npz", "/srv/abs")


@pytest.mark.parametrize("rule, text", [
    (dict(low=1, high=1000), "in 1..1000"),
    (dict(low=1, high=2.5), "in [1, 2.5]"),
    (dict(low=0.0, high=1.0), "in [0.0, 1.0]"),
    (dict(low=0, high=1, low_open=True), "in (0, 1]"),
    (dict(low=0, high=1, high_open=True), "in [0, 1)"),
    (dict(low=0, high=1, low_open=True, high_open=True), "in (0, 1)"),
    (dict(low=0), ">= 0"), (dict(low=0, low_open=True), "> 0"),
    (dict(high=5), "<= 5"), (dict(high=5, high_open=True), "< 5"),
    (dict(choices=("a", 2)), "one of ['a', 2]"), (dict(), ""), (dict(distinct=True), ""),
])
def test_a_rule_says_its_bounds_as_a_reader_writes_them(rule, text):
    from pipeline.core.params import Rule

    assert Rule(**rule).describe() == text


def test_the_schemas_helpers_give_the_default_the_doc_and_the_rule():
    """Called here (the schema's fields were made when the module was imported): a seed's
    range is the one NumPy accepts, a fraction's is [0, 1]."""
    import numpy as np

    from pipeline.core.params import Rule, _fraction, _seed, param

    spec = param(3, "Three.", low=1, high_open=False)
    assert (spec.default, spec.metadata["doc"], rule_of(spec)) == (3, "Three.", Rule(low=1))
    assert param(3).metadata["doc"] == ""
    seed = _seed("Seeds it.")
    assert (seed.default, seed.metadata["doc"]) == (1234, "Seeds it.")  # docs/params.md
    assert _seed().metadata["doc"] == "Seeds the draw; the same params give the same result."
    for value in (-1, 0, 1234, 2**32 - 1, 2**32):
        try:
            np.random.RandomState(value)
            numpy_takes = True
        except ValueError:
            numpy_takes = False
        assert rule_of(seed).allows(value) is numpy_takes, value
    assert "the range NumPy and TensorFlow accept" in rule_of(seed).refusal(2**32)
    fraction = _fraction(0.25, "A quarter.")
    assert (fraction.default, fraction.metadata["doc"]) == (0.25, "A quarter.")
    for value, accepted in ((0.0, True), (1.0, True), (math.nextafter(0.0, -1), False),
                            (math.nextafter(1.0, 2), False)):
        assert rule_of(fraction).allows(value) is accepted, value
    assert rule_of(fraction).refusal(2) == "must be in [0.0, 1.0] (a fraction), got 2"


def test_the_resolved_params_say_the_file_the_override_and_every_value(tmp_path):
    from pipeline.core.params import section_dict, write_resolved

    path = tmp_path / "params.toml"
    path.write_text("[train]\nepochs = 3\n")
    params = load_params(path, "convert.onnx=false")
    write_resolved(tmp_path / "params.json", params, path, "convert.onnx=false")
    written = json.loads((tmp_path / "params.json").read_text())
    assert written["params_file"] == str(path)
    assert written["PIPELINE_SET"] == "convert.onnx=false"
    assert written["params"]["train"]["epochs"] == 3 and written["params"]["convert"]["onnx"] \
        is False
    for name in sections():
        section = getattr(params, name)
        assert section_dict(section) == {f.name: getattr(section, f.name)
                                         for f in dataclasses.fields(section)}
        assert written["params"][name] == {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in section_dict(section).items()}
    assert written["params"]["builds"][0]["name"] == params.builds[0].name
    assert written["params"]["base_dir"] == str(tmp_path)


def test_an_override_splits_at_the_first_equals_and_the_first_dot(tmp_path):
    from pipeline.core.overrides import apply_overrides

    out = apply_overrides({}, "nightly.mark_accuracy_change_pt=0.5")
    assert out == {"nightly": {"mark_accuracy_change_pt": 0.5}}
    with pytest.raises(ParamsError) as err:
        apply_overrides({}, "train.a.b=1")
    assert str(err.value).startswith("PIPELINE_SET: train.a.b: unknown key")
    with pytest.raises(ParamsError) as err:
        apply_overrides({}, "train.epochs=2=3")
    assert str(err.value).startswith("PIPELINE_SET: train.epochs: must be int, got str")
    with pytest.raises(ParamsError) as err:
        apply_overrides({"train": 3}, "train.epochs=2")
    assert str(err.value) == "train: must be a table"
    path = tmp_path / "p.toml"
    path.write_text("[train]\nepochs = 0\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: train.epochs: must be in 1..1000")


def test_the_reference_reads_the_params_file_and_the_override_from_the_environment(
        tmp_path, monkeypatch, capsys):
    from pipeline.core.params import main

    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 5\n")
    monkeypatch.setenv("PIPELINE_PARAMS", str(path))
    monkeypatch.setenv("PIPELINE_SET", "train.batch_size=64")
    assert main([]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert (printed["train"]["epochs"], printed["train"]["batch_size"]) == (5, 64)
    monkeypatch.delenv("PIPELINE_SET")
    assert main([]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["batch_size"] == 128
    monkeypatch.delenv("PIPELINE_PARAMS")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.toml").write_text("[train]\nepochs = 4\n")
    assert main([]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["epochs"] == 4
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert "Print every params key with its resolved value, what it means and its rule." in \
        " ".join(usage.split())
    assert "section.key=value;... (default: $PIPELINE_SET)" in usage
