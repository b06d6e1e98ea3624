"""config.pbtxt: Triton's `ModelConfig` in protobuf text format, written by modelbuild, read with Triton's schema.

Reading goes through the ModelConfig message that tritonclient ships, so an unknown field or a bad
enum fails as Triton would fail it. Writing is a small text writer for the subset modelbuild emits
(it keeps comments and field order, which protobuf's own printer does not); the Triton step reads
every file it writes back through the schema and requires the message it meant.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError

if TYPE_CHECKING:
    from google.protobuf.message import Message


# --- reading, with Triton's schema -----------------------------------------------------------------


def model_config_class() -> type["Message"]:
    """Triton's `inference.ModelConfig` message, from the model_config.proto that tritonclient ships.

    The generated module is loaded from its file so that reading a config needs only protobuf, not
    gRPC (importing `tritonclient.grpc` starts the whole gRPC client).
    """
    name = "tritonclient.grpc.model_config_pb2"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise StepError("reading config.pbtxt needs Triton's ModelConfig schema from tritonclient "
                            "(pip install -c constraints.txt --no-deps tritonclient)")
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None or not path.is_file():
            raise StepError(f"tritonclient has no {path.name}; reinstall tritonclient")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # one registration of model_config.proto in protobuf's pool
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module.ModelConfig


def parse_config(text: str, where: str) -> dict[str, Any]:
    """config.pbtxt text → dict, validated against Triton's ModelConfig schema.

    An unknown field, a bad enum value or a malformed value raises StepError with protobuf's message
    (line:column) and `where` (the file). The dict holds the fields that are set, as protobuf sees
    them: enums by name ("TYPE_FP32"), integers as int, repeated fields as lists, maps as dicts;
    scalars at their default (max_batch_size 0, kind KIND_AUTO) are absent, as they are to Triton.
    """
    from google.protobuf import text_format

    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise StepError(f"{where} is not a valid Triton ModelConfig: {str(exc).rstrip('.')}; fix it or rebuild "
                        "the target") from exc
    return message_dict(message)


def message_dict(message: "Message") -> dict[str, Any]:
    """The set fields of a protobuf message as plain Python values (see `parse_config`)."""
    return {field.name: _field_value(field, value) for field, value in message.ListFields()}


def _field_value(field: Any, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        inner = entry.fields_by_name["value"]
        return {key: _single(inner, item) for key, item in value.items()}
    if _repeated(field):
        return [_single(field, item) for item in value]
    return _single(field, value)


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` is deprecated there
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def _single(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == field.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    return value


# --- writing (the subset modelbuild writes) -------------------------------------------------------

# Enum-valued fields: written bare (TYPE_FP32), not quoted.
ENUMS = frozenset({"data_type", "kind", "format"})


def write_pbtxt(config: dict[str, Any], comments: list[str] | None = None) -> str:
    """Protobuf text format of a ModelConfig given as a dict (scalars, lists, nested dicts), in dict order."""
    lines = [f"# {c}" for c in comments or []]
    lines += _fields(config, 0)
    return "\n".join(lines) + "\n"


def _fields(message: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_fields(value, depth + 1), f"{pad}}}"] if value else [f"{pad}{key} {{ }}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines += [f"{pad}  {{", *_fields(item, depth + 2), f"{pad}  }}{',' if i < len(value) - 1 else ''}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            items = ", ".join(_scalar(key, v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]" if value else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}")
    return lines


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if key in ENUMS:
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
