"""A writer of Torch7's binary serialisation, as torch.save writes it (torch7's File.lua, Tensor.c).

Test support: it writes the files worker.models.torch7 reads. Shared Python objects (the same dict,
list, TorchObject or array twice) are written once and referenced after, as Torch writes a table
or object it has already written (by pointer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.models.torch7 import TorchObject

TENSOR_NAMES = {
    np.dtype("float32"): "Float",
    np.dtype("float64"): "Double",
    np.dtype("int64"): "Long",
    np.dtype("int32"): "Int",
    np.dtype("uint8"): "Byte",
}


@dataclass(eq=False)
class Storage:
    """A bare torch.*Storage (e.g. the LongStorage of nn.Reshape's size)."""

    data: np.ndarray


@dataclass(eq=False)
class View:
    """A tensor that is a strided view (0-based ``offset``, strides in elements) into ``storage``."""

    storage: Storage
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0


class Torch7Writer:
    """Serialises Python values: None, bool, int/float (Lua numbers), str, dict/list (Lua tables),
    TorchObject (classes), numpy arrays (contiguous tensors), Storage and View."""

    def __init__(self, float_prefix: str = "Float") -> None:
        self.float_prefix = float_prefix  # "Cuda" writes float32 tensors as torch.CudaTensor, as a GPU model is saved
        self.parts: list[bytes] = []
        self.indices: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps written objects alive, so their id() stays unique

    def int32(self, value: int) -> None:
        self.parts.append(struct.pack("<i", value))

    def int64(self, value: int) -> None:
        self.parts.append(struct.pack("<q", value))

    def string(self, text: str) -> None:
        raw = text.encode()
        self.int32(len(raw))
        self.parts.append(raw)

    def reference(self, obj: Any) -> bool:
        """Writes the reference index; True when ``obj`` was written before (nothing more to write)."""
        if id(obj) in self.indices:
            self.int32(self.indices[id(obj)])
            return True
        self.indices[id(obj)] = len(self.indices) + 1
        self.keep.append(obj)
        self.int32(self.indices[id(obj)])
        return False

    def class_header(self, name: str, version: int = 1) -> None:
        self.string(f"V {version}")
        self.string(name)

    def element_name(self, dtype: np.dtype) -> str:
        name = TENSOR_NAMES[np.dtype(dtype)]
        return self.float_prefix if name == "Float" else name

    def write(self, obj: Any) -> None:
        if obj is None:
            self.int32(0)
        elif isinstance(obj, bool):
            self.int32(5)
            self.int32(1 if obj else 0)
        elif isinstance(obj, (int, float)):
            self.int32(1)
            self.parts.append(struct.pack("<d", float(obj)))
        elif isinstance(obj, str):
            self.int32(2)
            self.string(obj)
        elif isinstance(obj, (dict, list)):
            self.int32(3)
            if self.reference(obj):
                return
            items = list(obj.items()) if isinstance(obj, dict) else [(i + 1, v) for i, v in enumerate(obj)]
            self.int32(len(items))
            for key, value in items:
                self.write(key)
                self.write(value)
        elif isinstance(obj, TorchObject):
            self.int32(4)
            if self.reference(obj):
                return
            self.class_header(obj.class_name, obj.version)
            self.write(obj.fields)
        elif isinstance(obj, Storage):
            self.int32(4)
            if self.reference(obj):
                return
            self.class_header(f"torch.{self.element_name(obj.data.dtype)}Storage")
            self.int64(obj.data.size)
            self.parts.append(np.ascontiguousarray(obj.data).astype(obj.data.dtype.newbyteorder("<")).tobytes())
        elif isinstance(obj, View):
            self.tensor(obj, obj.storage, obj.sizes, obj.strides, obj.offset)
        elif isinstance(obj, np.ndarray):
            if obj.size == 0:
                self.tensor(obj, None, (), (), 0)
            else:
                strides = tuple(int(np.prod(obj.shape[i + 1 :])) for i in range(obj.ndim))
                self.tensor(obj, Storage(np.ascontiguousarray(obj).reshape(-1)), obj.shape, strides, 0)
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def tensor(self, key: Any, storage: Storage | None, sizes, strides, offset: int) -> None:
        self.int32(4)
        if self.reference(key):
            return
        dtype = storage.data.dtype if storage is not None else np.dtype("float32")
        self.class_header(f"torch.{self.element_name(dtype)}Tensor")
        self.int32(len(sizes))
        for size in sizes:
            self.int64(size)
        for stride in strides:
            self.int64(stride)
        self.int64(offset + 1)
        self.write(storage)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def dumps(obj: Any, float_prefix: str = "Float") -> bytes:
    """``obj`` in Torch7's binary format."""
    writer = Torch7Writer(float_prefix)
    writer.write(obj)
    return writer.getvalue()
