"""Action keys: canonical, pinned, and explained when they change."""

from __future__ import annotations

import copy

from buildsys.storage.keys import action_key, explain, package_version, toolchain

COMPONENTS = {
    "step": "onnx-from-pytorch",
    "step_version": 1,
    "options": {"opset": 18, "dynamo": False},
    "inputs": {"code": "a" * 64, "weights": "b" * 64},
    "signature": {"inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32", "layout": None}],
                  "outputs": [{"name": "y", "kind": "scores"}]},
    "toolchain": {"torch": "2.13.0", "onnx": "1.23.2"},
}


def test_golden_action_key() -> None:
    # Pinned: if this changes, every user's cache and lock go stale. Bump KEY_SCHEMA on purpose.
    assert action_key(COMPONENTS) == "f5c689eb34f5ef9aed1edd98022589b160018212f78153dc257d1798bedff876"


def test_key_ignores_dict_order() -> None:
    reordered = dict(reversed(list(COMPONENTS.items())))
    reordered["options"] = {"dynamo": False, "opset": 18}
    assert action_key(reordered) == action_key(COMPONENTS)


def test_every_component_changes_the_key() -> None:
    for path, value in [(("options", "opset"), 17), (("inputs", "weights"), "c" * 64), (("toolchain", "onnx"), "1.24.0"),
                        (("step_version",), 2)]:
        changed = copy.deepcopy(COMPONENTS)
        target = changed
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        assert action_key(changed) != action_key(COMPONENTS), path


def test_explain_names_what_changed() -> None:
    new = copy.deepcopy(COMPONENTS)
    new["options"]["opset"] = 17
    new["inputs"]["weights"] = "c" * 64
    new["inputs"]["upstream m/onnx"] = "d" * 64
    new["toolchain"]["onnx"] = "1.24.0"
    assert explain(COMPONENTS, new) == [
        "option opset 18→17", "new input upstream m/onnx", "weights changed", "toolchain onnx 1.23.2→1.24.0",
    ]
    assert explain(COMPONENTS, copy.deepcopy(COMPONENTS)) == []


def test_tolerance_change_is_its_own_reason() -> None:
    old = {"step": "check", "acceptance": {"outputs": {"y": {"max_abs": 1e-4}}}}
    new = {"step": "check", "acceptance": {"outputs": {"y": {"max_abs": 1e-3}}}}
    assert explain(old, new) == ["tolerance changed"]


def test_versions_come_from_metadata_without_import() -> None:
    assert package_version("pydantic") != "not installed"
    assert package_version("surely-not-a-package-xyz") == "not installed"
    assert toolchain(["pydantic", "pydantic"]) == {"pydantic": package_version("pydantic")}
