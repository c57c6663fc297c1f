"""A minimal, hand-written codec for `tf.train.Example`, so TFRecords need no TensorFlow.

Only the three messages TFRecord tile stores use are supported (field numbers from
tensorflow/core/example/{example,feature}.proto):

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }       # entry: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

The encoder writes map entries in sorted key order with packed numbers (what protobuf's own
deterministic serialisation produces), so equal input gives byte-identical records. The decoder
follows the protobuf parsing rules instead of assuming our layout: any field order, packed or
unpacked numbers, unknown fields skipped, repeated sub-messages merged, last map key wins.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

Kind = Literal["bytes_list", "float_list", "int64_list"]

_KIND_FIELD: dict[str, int] = {"bytes_list": 1, "float_list": 2, "int64_list": 3}
_FIELD_KIND: dict[int, Kind] = {1: "bytes_list", 2: "float_list", 3: "int64_list"}
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
_ONE_BYTE = [bytes([i]) for i in range(0x80)]


class ProtobufError(ValueError):
    """The bytes are not a valid serialized `tf.train.Example`."""


class Feature(NamedTuple):
    """One decoded feature: its kind and its values (bytes, float or int)."""

    kind: Kind | None  # None: a Feature message with no list set
    values: list[Any]


FeatureLike = Any  # bytes | str | int | float | a sequence or array of one of them | Feature


# --------------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values take 10 bytes (two's complement on 64 bits)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _prefix(field: int, size: int) -> bytes:
    """Tag and length of a length-delimited field whose payload is `size` bytes."""
    return _varint((field << 3) | _WIRE_LEN) + _varint(size)


def _len_field(field: int, payload: bytes) -> bytes:
    return _prefix(field, len(payload)) + payload


def _as_feature(value: FeatureLike) -> Feature:
    """Infer the list kind from Python/NumPy types (bool and integers -> int64_list)."""
    if isinstance(value, Feature):
        return value
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return Feature("bytes_list", [value])
    if isinstance(value, (bool, int, np.integer)):
        return Feature("int64_list", [int(value)])
    if isinstance(value, (float, np.floating)):
        return Feature("float_list", [float(value)])
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            return Feature("int64_list", [int(v) for v in value.ravel()])
        if value.dtype.kind == "f":
            return Feature("float_list", [float(v) for v in value.ravel()])
        return Feature("bytes_list", list(value.ravel()))
    if isinstance(value, Sequence) and len(value) > 0:
        kinds = {_as_feature(v).kind for v in value}
        if len(kinds) == 1:
            return Feature(kinds.pop(), list(value))
    raise TypeError(f"cannot infer a tf.train.Feature kind from {type(value).__name__} "
                    f"{value!r:.60}; pass protobuf.Feature(kind, values)")


def _feature_parts(feature: FeatureLike) -> tuple[list[Any], int]:
    """A Feature as a list of byte chunks and their total size: payloads are not copied."""
    kind, values = _as_feature(feature)
    parts: list[Any] = []
    if kind == "bytes_list":
        for v in values:
            v = v.encode("utf-8") if isinstance(v, str) else v
            parts += (_prefix(1, len(v)), v)
    elif kind == "int64_list":
        for v in values:
            if not _INT64_MIN <= int(v) <= _INT64_MAX:
                raise ValueError(f"int64 feature value out of range: {v}")
        packed = b"".join(_varint(int(v)) for v in values)
        parts = [_len_field(1, packed)] if packed else []
    elif kind == "float_list":
        packed = struct.pack(f"<{len(values)}f", *values)
        parts = [_len_field(1, packed)] if packed else []
    elif kind is None:
        return [], 0
    else:
        raise ValueError(f"unknown feature kind {kind!r}")
    body = sum(len(memoryview(p)) if not isinstance(p, bytes) else len(p) for p in parts)
    head = _prefix(_KIND_FIELD[kind], body)
    return [head, *parts], len(head) + body


def encode_example(features: Mapping[str, FeatureLike]) -> bytes:
    """Serialize a `tf.train.Example` with its features in sorted key order (deterministic).

    Built as a list of chunks joined once, so a tile's image bytes are copied a single time.
    """
    parts: list[Any] = []
    total = 0
    for key in sorted(features):
        fparts, fsize = _feature_parts(features[key])
        key_field = _len_field(1, key.encode("utf-8"))
        value_head = _prefix(2, fsize)
        entry_size = len(key_field) + len(value_head) + fsize
        entry_head = _prefix(1, entry_size)
        parts += (entry_head, key_field, value_head, *fparts)
        total += len(entry_head) + entry_size
    return b"".join([_prefix(1, total), *parts])


# --------------------------------------------------------------------------- decoding


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")


def _fields(buf: memoryview, pos: int, end: int) -> Iterable[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) where value is an int or a (start, end) span."""
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:  # one-byte fast paths: almost every tag and many lengths
            pos += 1
        else:
            tag, pos = _read_varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufError("field number 0")
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == _WIRE_LEN:
            size = buf[pos] if pos < end else 0x80
            if size < 0x80:
                pos += 1
            else:
                size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise ProtobufError("length-delimited field runs past the end of its message")
            value, pos = (pos, pos + size), pos + size
        elif wire == _WIRE_I64:
            if pos + 8 > end:
                raise ProtobufError("truncated fixed64 field")
            value, pos = (pos, pos + 8), pos + 8
        elif wire == _WIRE_I32:
            if pos + 4 > end:
                raise ProtobufError("truncated fixed32 field")
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire} (field {field})")
        yield field, wire, value


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def _decode_list(buf: memoryview, start: int, end: int, kind: Kind, out: list) -> None:
    for field, wire, value in _fields(buf, start, end):
        if field != 1:
            continue  # unknown field inside a list message
        if kind == "bytes_list":
            if wire != _WIRE_LEN:
                raise ProtobufError("BytesList.value is not length-delimited")
            out.append(bytes(buf[value[0]:value[1]]))
        elif kind == "int64_list":
            if wire == _WIRE_VARINT:
                out.append(_signed64(value))
            elif wire == _WIRE_LEN:  # packed
                pos, stop = value
                while pos < stop:
                    v, pos = _read_varint(buf, pos, stop)
                    out.append(_signed64(v))
            else:
                raise ProtobufError(f"Int64List.value with wire type {wire}")
        else:  # float_list
            if wire == _WIRE_I32:
                out.append(struct.unpack_from("<f", buf, value[0])[0])
            elif wire == _WIRE_LEN:
                n, rem = divmod(value[1] - value[0], 4)
                if rem:
                    raise ProtobufError("packed FloatList length is not a multiple of 4")
                out.extend(struct.unpack_from(f"<{n}f", buf, value[0]))
            else:
                raise ProtobufError(f"FloatList.value with wire type {wire}")


def _decode_feature(buf: memoryview, start: int, end: int) -> Feature:
    kind: Kind | None = None
    values: list[Any] = []
    for field, wire, value in _fields(buf, start, end):
        if field not in _FIELD_KIND:
            continue
        if wire != _WIRE_LEN:
            raise ProtobufError(f"Feature field {field} is not length-delimited")
        new_kind = _FIELD_KIND[field]
        if new_kind != kind:  # oneof: a different member replaces the previous one
            kind, values = new_kind, []
        _decode_list(buf, value[0], value[1], new_kind, values)  # same member: merge
    return Feature(kind, values)


def decode_example(data: bytes | bytearray | memoryview) -> dict[str, Feature]:
    """Parse a serialized `tf.train.Example` into {name: Feature(kind, values)}.

    Every feature is returned, including ones this project does not use.
    """
    buf = memoryview(data).cast("B")
    features: dict[str, Feature] = {}
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field != 1:
            continue
        if wire != _WIRE_LEN:
            raise ProtobufError("Example.features is not length-delimited")
        for efield, ewire, entry in _fields(buf, value[0], value[1]):
            if efield != 1:
                continue
            if ewire != _WIRE_LEN:
                raise ProtobufError("Features.feature entry is not length-delimited")
            key, feat = "", Feature(None, [])
            for kfield, kwire, kval in _fields(buf, entry[0], entry[1]):
                if kwire != _WIRE_LEN or kfield not in (1, 2):
                    continue
                if kfield == 1:
                    try:
                        key = bytes(buf[kval[0]:kval[1]]).decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ProtobufError(f"feature name is not utf-8: {e}") from None
                else:
                    part = _decode_feature(buf, kval[0], kval[1])
                    if part.kind is not None and part.kind == feat.kind:
                        feat = Feature(feat.kind, feat.values + part.values)
                    elif part.kind is not None or feat.kind is None:
                        feat = part
            features[key] = feat  # protobuf map semantics: the last entry for a key wins
    return features
