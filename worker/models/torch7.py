"""A reader for Torch7's binary serialisation (``torch.save(file, object)``, the ``.t7`` files).

The format (torch7's File.lua and generic/Tensor.c, little-endian, 8-byte longs as on x86-64 Linux):
every object is an int32 type tag, then

- nil (0): nothing; number (1): a float64; boolean (5): an int32; string (2): int32 length + bytes;
- table (3): an int32 reference index (seen before: the same object again), then an int32 count
  of key/value pairs, each an object;
- torch object (4): an int32 reference index, then the strings "V <version>" and the class name
  (a file from before versions has the class name first). Tensors and storages follow with their
  own layout: a tensor is int32 dims, int64 sizes, int64 strides, int64 1-based storage offset,
  then its storage as an object; a storage is an int64 element count and the raw elements. Any
  other class (every nn module) follows with one table of its fields.

Lua functions (6, 7, 8) are not read: a model file does not hold any. Errors are ModelFileError,
naming the file and the byte offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import ModelFileError

TYPE_NIL, TYPE_NUMBER, TYPE_STRING, TYPE_TABLE, TYPE_TORCH, TYPE_BOOLEAN = 0, 1, 2, 3, 4, 5
FUNCTION_TYPES = (6, 7, 8)
MAX_DEPTH = 200  # nesting of tables and objects; a model is a few dozen deep (and Python's stack is finite)

# Element types of tensors and storages by class-name prefix ("torch.Float" of torch.FloatTensor).
# CUDA classes are saved with the same element layout as their CPU counterparts.
ELEMENT_TYPES: dict[str, np.dtype] = {
    "Float": np.dtype("<f4"),
    "Double": np.dtype("<f8"),
    "Half": np.dtype("<f2"),
    "Byte": np.dtype("u1"),
    "Char": np.dtype("i1"),
    "Short": np.dtype("<i2"),
    "Int": np.dtype("<i4"),
    "Long": np.dtype("<i8"),
    "Cuda": np.dtype("<f4"),
    "CudaDouble": np.dtype("<f8"),
    "CudaHalf": np.dtype("<f2"),
    "CudaLong": np.dtype("<i8"),
}


@dataclass
class TorchObject:
    """A Torch7 class instance other than a tensor or storage (an nn module): its class name and fields."""

    class_name: str
    version: int
    fields: dict[Any, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field, or ``default``."""
        return self.fields.get(key, default)


def lua_list(table: Any) -> list[Any]:
    """A Lua array (a table keyed 1..n) as a list; an empty list for nil."""
    if table is None:
        return []
    if not isinstance(table, dict):
        raise ModelFileError(f"expected a Lua array, found {type(table).__name__}")
    return [table[index] for index in range(1, len(table) + 1) if index in table]


def _element_type(class_name: str, suffix: str) -> np.dtype | None:
    if not class_name.startswith("torch.") or not class_name.endswith(suffix):
        return None
    return ELEMENT_TYPES.get(class_name[len("torch.") : -len(suffix)])


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0
        self.memo: dict[int, Any] = {}

    def fail(self, message: str, at: int | None = None) -> ModelFileError:
        return ModelFileError(f"{self.name}: {message} at byte {self.pos if at is None else at}")

    def take(self, count: int, what: str) -> bytes:
        if count < 0:
            raise self.fail(f"negative length {count} for {what}")
        if self.pos + count > len(self.data):
            raise self.fail(f"truncated: {what} needs {count} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    def int64(self, what: str) -> int:
        return struct.unpack("<q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.int32(f"length of {what}"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")  # Lua strings are bytes; keys and class names are ASCII anyway

    def read(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"objects nested more than {MAX_DEPTH} deep")
        start = self.pos
        tag = self.int32("a type tag")
        if tag == TYPE_NIL:
            return None
        if tag == TYPE_NUMBER:
            return struct.unpack("<d", self.take(8, "a number"))[0]
        if tag == TYPE_BOOLEAN:
            return self.int32("a boolean") == 1
        if tag == TYPE_STRING:
            return self.string("a string")
        if tag in (TYPE_TABLE, TYPE_TORCH):
            index = self.int32("a reference index")
            if index in self.memo:
                return self.memo[index]
            return self.table(index, depth) if tag == TYPE_TABLE else self.torch_object(index, depth)
        if tag in FUNCTION_TYPES:
            raise self.fail("a Lua function (not supported: model files hold none)", start)
        raise self.fail(f"not a Torch7 binary file: unknown type tag {tag}", start)

    def table(self, index: int, depth: int) -> dict[Any, Any]:
        table: dict[Any, Any] = {}
        self.memo[index] = table  # before the contents: a table may hold itself
        size = self.int32("a table size")
        if size < 0 or size > len(self.data):
            raise self.fail(f"bad table size {size}")
        for _ in range(size):
            key = self.read(depth + 1)
            value = self.read(depth + 1)
            if isinstance(key, float) and key.is_integer():
                key = int(key)  # Lua array keys
            if not isinstance(key, (str, int, float, bool)):
                raise self.fail(f"unsupported table key of type {type(key).__name__}")
            table[key] = value
        return table

    def torch_object(self, index: int, depth: int) -> Any:
        version_text = self.string("a class version")
        if version_text.startswith("V "):
            try:
                version = int(version_text[2:])
            except ValueError:
                raise self.fail(f"bad class version {version_text!r}") from None
            class_name = self.string("a class name")
        else:
            version, class_name = 0, version_text
        storage_type = _element_type(class_name, "Storage")
        if storage_type is not None:
            storage = self.storage(storage_type, class_name)
            self.memo[index] = storage
            return storage
        tensor_type = _element_type(class_name, "Tensor")
        if tensor_type is not None:
            tensor = self.tensor(tensor_type, class_name, depth)
            self.memo[index] = tensor
            return tensor
        if class_name.startswith("torch.") and ("Tensor" in class_name or "Storage" in class_name):
            raise self.fail(f"unsupported tensor type {class_name}")
        obj = TorchObject(class_name, version)
        self.memo[index] = obj
        fields = self.read(depth + 1)
        if not isinstance(fields, dict):
            raise self.fail(f"{class_name}: expected a table of fields, found {type(fields).__name__}")
        obj.fields = fields
        return obj

    def storage(self, dtype: np.dtype, class_name: str) -> np.ndarray:
        count = self.int64(f"{class_name} size")
        if count < 0 or count * dtype.itemsize > len(self.data) - self.pos:
            raise self.fail(f"truncated: {class_name} of {count} elements needs {count * dtype.itemsize} bytes")
        return np.frombuffer(self.take(count * dtype.itemsize, class_name), dtype).copy()

    def tensor(self, dtype: np.dtype, class_name: str, depth: int) -> np.ndarray:
        dims = self.int32(f"{class_name} dimensions")
        if not 0 <= dims <= 64:
            raise self.fail(f"{class_name} with {dims} dimensions")
        sizes = [self.int64(f"{class_name} sizes") for _ in range(dims)]
        strides = [self.int64(f"{class_name} strides") for _ in range(dims)]
        offset = self.int64(f"{class_name} storage offset") - 1
        at = self.pos
        storage = self.read(depth + 1)
        if dims == 0 or storage is None:
            return np.zeros((0,), dtype)
        if not isinstance(storage, np.ndarray) or storage.dtype != dtype:
            raise self.fail(f"{class_name} has a storage of another type", at)
        if min(sizes) < 0 or min(strides) < 0 or offset < 0:
            raise self.fail(f"{class_name} with negative size, stride or offset {sizes}, {strides}, {offset}", at)
        if min(sizes) == 0:
            return np.zeros(sizes, dtype)
        if int(np.prod(sizes, dtype=np.float64)) > len(storage):
            # A stride-0 (expanded) tensor could make a tiny file allocate without bound; models hold none.
            raise self.fail(f"{class_name} of size {sizes} has more elements than its storage of {len(storage)}", at)
        last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        if last >= len(storage):
            raise self.fail(f"{class_name} of size {sizes} reaches past its storage of {len(storage)}", at)
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=sizes, strides=[stride * dtype.itemsize for stride in strides], writeable=False
        )
        return np.array(view)  # a copy: views into a shared storage must not alias each other


def loads(data: bytes, name: str = "<bytes>") -> Any:
    """One Torch7 object from bytes: tables as dicts (integer keys for Lua arrays), tensors as numpy
    arrays, storages as 1-d arrays, other classes as TorchObject. Shared references stay shared."""
    reader = _Reader(data, name)
    obj = reader.read()
    if reader.pos != len(data):
        raise reader.fail(f"{len(data) - reader.pos} bytes after the object")
    return obj


def load(path: str | Path) -> Any:
    """One Torch7 object from a ``.t7`` file written by torch.save (binary format)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data[:1].isdigit():
        raise ModelFileError(f"{path}: looks like Torch7's ascii format; save it with torch.save(f, m, 'binary')")
    return loads(data, str(path))
