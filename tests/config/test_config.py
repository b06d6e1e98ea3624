"""deploy.yaml loading: validation, recipes/includes, and the file:line errors for bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from buildsys.config.load import load
from buildsys.errors import ConfigError
from tests.conftest import REPO

MODEL = """\
models:
  m:
    source:
      factory: pkg.net:build
    inputs:
      - {name: x, shape: [batch, 4]}
    outputs:
      - {name: y, kind: scores}
"""


def write(tmp_path: Path, text: str, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MODEL + "targets:\n  t: {model: m, format: onnx, precision: int8}\n"))
    target = cfg.project.targets["t"]
    assert target.goal == "onnx-int8"
    assert target.acceptance.on_fail == "error"
    assert cfg.project.models["m"].inputs[0].dtype == "float32"
    assert cfg.where("targets", "t") == cfg.where("targets", "t", "nonexistent")
    assert cfg.where("targets", "t").line == 10


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load(tmp_path / "nope.yaml")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "targets:\n  t: {model: m, format: onnx\n")
    with pytest.raises(ConfigError, match=r"deploy\.yaml:1[01]: malformed YAML"):
        load(path)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "targets:\n  t:\n    model: m\n    format: onnx\n    precison: int8\n")
    with pytest.raises(ConfigError, match=r"deploy\.yaml:13: targets\.t: unknown key 'precison' — did you mean 'precision'\?"):
        load(path)


def test_wrong_enum_value_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "targets:\n  t:\n    model: m\n    format: onnx\n    precision: int9\n")
    with pytest.raises(ConfigError, match=r":13: targets\.t\.precision: 'int9' is not one of fp32, fp16, int8, int4 — did you mean 'int8'\?"):
        load(path)


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL.replace("shape: [batch, 4]", "shape: [batch, 4.5]") + "targets: {}\n")
    with pytest.raises(ConfigError, match=r":6: models\.m\.inputs\[0\]\.shape\[1\]"):
        load(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "targets:\n  t: {format: onnx}\n")
    with pytest.raises(ConfigError, match=r":10: targets\.t: required key 'model' is missing"):
        load(path)


def test_source_needs_exactly_one_kind(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL.replace("factory: pkg.net:build", "factory: pkg.net:build\n      onnx: m.onnx") + "targets: {}\n")
    with pytest.raises(ConfigError, match=r"models\.m\.source: give exactly one of factory, transformers, torchscript, exported, onnx"):
        load(path)


def test_recipe_merges_and_target_wins(tmp_path: Path) -> None:
    write(tmp_path, """\
        recipes:
          base:
            format: onnx
            precision: int8
            options:
              onnx-int8: {method: static, per_channel: true}
        """, "recipes.yaml")
    cfg = load(write(tmp_path, "include: [recipes.yaml]\n" + MODEL + textwrap.dedent("""\
        targets:
          t:
            model: m
            recipe: base
            options:
              onnx-int8: {per_channel: false}
        """)))
    target = cfg.project.targets["t"]
    assert target.precision == "int8"
    assert target.options == {"onnx-int8": {"method": "static", "per_channel": False}}
    # a key that came from the recipe keeps the recipe's file and line
    assert cfg.where("targets", "t", "precision").file.name == "recipes.yaml"


def test_bad_key_in_recipe_points_into_the_recipe_file(tmp_path: Path) -> None:
    write(tmp_path, "recipes:\n  base:\n    format: onnx\n    precisoin: fp16\n", "recipes.yaml")
    path = write(tmp_path, "include: [recipes.yaml]\n" + MODEL + "targets:\n  t: {model: m, recipe: base}\n")
    with pytest.raises(ConfigError, match=r"recipes\.yaml:4: targets\.t: unknown key 'precisoin'"):
        load(path)


def test_unknown_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "recipes:\n  server: {format: onnx}\ntargets:\n  t: {model: m, recipe: sever}\n")
    with pytest.raises(ConfigError, match=r"unknown recipe 'sever' — did you mean 'server'\?"):
        load(path)


def test_missing_include(tmp_path: Path) -> None:
    path = write(tmp_path, "include: [nope.yaml]\n" + MODEL + "targets: {}\n")
    with pytest.raises(ConfigError, match=r"deploy\.yaml:1: include\[0\]: included file 'nope.yaml' does not exist"):
        load(path)


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "targets:\n  t: {model: m, format: onnx}\n  t: {model: m, format: pt2}\n")
    with pytest.raises(ConfigError, match=r":11: targets: duplicate key 't'"):
        load(path)


def test_bad_layout_rank(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL.replace("shape: [batch, 4]", "shape: [batch, 4], layout: NCHW") + "targets: {}\n")
    with pytest.raises(ConfigError, match=r"layout 'NCHW' has 4 axes but shape has 2"):
        load(path)


def test_example_config_is_valid() -> None:
    cfg = load(REPO / "deploy.yaml.example")
    assert {"digits", "har"} <= set(cfg.project.models)
    assert cfg.project.targets["digits-int8"].options["onnx-int8"]["method"] == "static"


def test_recipe_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, MODEL + "recipes:\n  a: {recipe: b}\n  b: {recipe: a}\ntargets:\n  t: {model: m, recipe: a}\n")
    with pytest.raises(ConfigError, match=r"targets\.t\.recipe: recipes include each other in a cycle: a → b → a"):
        load(path)


def test_platform_presets_and_overrides(tmp_path: Path) -> None:
    with_calibration = MODEL.replace("outputs:", "data: {calibration: c.npz}\n    outputs:")
    cfg = load(write(tmp_path, with_calibration + textwrap.dedent("""\
        targets:
          phone: {model: m, platform: ios}
          droid: {model: m, platform: android}
          fp32: {model: m, platform: ios, precision: fp32}
          plain: {model: m, platform: android, precision: fp16}
        """)))
    t = cfg.project.targets
    assert (t["phone"].format, t["phone"].precision) == ("coreml", "fp16")
    assert (t["droid"].format, t["droid"].precision) == ("tflite", "int8")  # calibration data exists
    assert t["droid"].options["tflite-int8"]["mode"] == "full"
    # overriding the preset's precision drops the preset's options for its old goal
    assert t["fp32"].goal == "coreml" and "coreml-fp16" not in t["fp32"].options
    assert t["plain"].goal == "tflite-fp16" and "tflite-int8" not in t["plain"].options
    no_data = load(write(tmp_path, MODEL + "targets:\n  droid: {model: m, platform: android}\n", "other.yaml"))
    assert no_data.project.targets["droid"].goal == "tflite-fp16"  # no calibration data: fp16


def test_intel_preset_is_openvino_int8_with_calibration_data_else_fp16(tmp_path: Path) -> None:
    with_calibration = MODEL.replace("outputs:", "data: {calibration: c.npz}\n    outputs:")
    cfg = load(write(tmp_path, with_calibration + "targets:\n  edge: {model: m, platform: intel}\n"))
    assert cfg.project.targets["edge"].goal == "openvino-int8"
    no_data = load(write(tmp_path, MODEL + "targets:\n  edge: {model: m, platform: intel}\n", "other.yaml"))
    assert no_data.project.targets["edge"].goal == "openvino-fp16"
    with pytest.raises(ConfigError, match=r"targets\.edge\.platform: 'intle' is not one of ios, android, server, intel"):
        load(write(tmp_path, MODEL + "targets:\n  edge: {model: m, platform: intle}\n", "bad.yaml"))
