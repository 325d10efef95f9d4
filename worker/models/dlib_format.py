"""Reader for dlib's DNN model files (``net_type`` objects written by ``dlib::serialize``).

The format is described in ../shared/docs/dlib-dnn-format.md. A file holds the loss layer, then
a nest of layers written from the output down to the input (version ints), then each layer's
record from the input up. Tag and skip layers leave only a marker: the wiring between them is
not stored, so each network builder checks the sequence of layer kinds it expects.

Every read is bounds-checked; a truncated, corrupted or foreign file raises ModelFileError
instead of producing garbage weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import ModelFileError

_MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any real layer, below a corrupt count


class _Stream:
    """Cursor over the file's bytes with dlib's primitive decoders."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.name}: not a valid dlib model file ({what} at byte {self.pos})")

    def take(self, count: int) -> memoryview:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail(f"file ends early: wanted {count} more bytes")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def boolean(self) -> bool:
        byte = self.take(1)[0]
        if byte not in (ord("0"), ord("1")):
            raise self.fail(f"bad bool byte 0x{byte:02x}")
        return byte == ord("1")

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        if not -2000 < exponent < 2000:
            raise self.fail(f"float exponent {exponent} out of range")
        return math.ldexp(mantissa, exponent)

    def string(self, limit: int = 256) -> str:
        length = self.integer()
        if not 0 <= length <= limit:
            raise self.fail(f"string length {length} out of range")
        try:
            return bytes(self.take(length)).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII string") from None

    def expect_int(self, expected: int, what: str) -> None:
        found = self.integer()
        if found != expected:
            raise self.fail(f"{what} version {found}, expected {expected}")

    def tensor(self) -> np.ndarray:
        self.expect_int(2, "tensor")
        shape = tuple(self.integer() for _ in range(4))
        if any(dim < 0 for dim in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = math.prod(shape)
        if count > _MAX_TENSOR_ELEMENTS:
            raise self.fail(f"tensor shape {shape} too large")
        raw = self.take(4 * count)
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        if not np.isfinite(values).all():
            raise self.fail("tensor holds NaN or infinite values")
        return values

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


# --- layer records ----------------------------------------------------------------------------


@dataclass
class Conv:
    """Convolution: weight (O, I, kh, kw), optional bias (O,), stride and padding (y, x)."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    kind: str = "con"


@dataclass
class Affine:
    """Per-channel y = x * gamma + beta (also what a batch-norm record becomes at inference)."""

    gamma: np.ndarray
    beta: np.ndarray
    kind: str = "affine"


@dataclass
class Relu:
    kind: str = "relu"


@dataclass
class Pool:
    """Max or average pooling; size (0, 0) means the whole map."""

    op: str
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def kind(self) -> str:
        return f"{self.op}_pool"


@dataclass
class FullyConnected:
    """out = flatten(x) @ weight (+ bias); weight is (inputs, outputs) as dlib stores it."""

    weight: np.ndarray
    bias: np.ndarray | None
    kind: str = "fc"


@dataclass
class AddPrev:
    kind: str = "add_prev"


@dataclass
class Marker:
    """A tag or skip layer: present in the nest, but its ids are not stored in the file."""

    kind: str = "marker"


@dataclass
class RgbInput:
    """Input layer: per-channel means (R, G, B); size for a fixed-size input, else a pyramid."""

    mean_rgb: tuple[float, float, float]
    size: tuple[int, int] | None = None
    pyramid_padding: int = 10
    pyramid_outer_padding: int = 11
    kind: str = "input"


Layer = Conv | Affine | Relu | Pool | FullyConnected | AddPrev | Marker


@dataclass
class DlibNetwork:
    """A parsed network: the loss record, the input record, and layers from input to output."""

    loss: str
    loss_options: dict[str, Any]
    input: RgbInput
    layers: list[Layer] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


def _skip_learning_rates(stream: _Stream, count: int = 4) -> None:
    for _ in range(count):
        stream.real()


def _read_conv(stream: _Stream, version: str) -> Conv:
    params = stream.tensor().reshape(-1)
    num_filters, rows, cols = (stream.integer() for _ in range(3))
    stride = (stream.integer(), stream.integer())
    padding = (stream.integer(), stream.integer())
    filters_shape = stream.alias()
    bias_shape = stream.alias()
    _skip_learning_rates(stream)
    use_bias = True
    if version in ("con_5", "con_6"):
        use_bias = stream.boolean()
    if version == "con_6" and stream.boolean():
        raise stream.fail("convolution with fused relu is not supported")
    out_channels, _, kh, kw = filters_shape
    if (out_channels, kh, kw) != (num_filters, rows, cols):
        raise stream.fail(f"convolution shape {filters_shape} does not match {num_filters}x{rows}x{cols}")
    weight_count = math.prod(filters_shape)
    bias_count = math.prod(bias_shape) if use_bias else 0
    if params.size != weight_count + bias_count:
        raise stream.fail(f"convolution has {params.size} parameters, expected {weight_count + bias_count}")
    weight = params[:weight_count].reshape(filters_shape)
    bias = params[weight_count:].copy() if use_bias else None
    return Conv(weight=weight, bias=bias, stride=stride, padding=padding)


def _read_affine(stream: _Stream, version: str) -> Affine:
    params = stream.tensor().reshape(-1)
    gamma_shape = stream.alias()
    stream.alias()
    mode = stream.integer()
    if version == "affine_2" and stream.boolean():
        raise stream.fail("disabled affine layers are not supported")
    if mode != 0:
        raise stream.fail("per-element affine layers are not supported")
    channels = math.prod(gamma_shape)
    if params.size != 2 * channels:
        raise stream.fail(f"affine layer has {params.size} parameters, expected {2 * channels}")
    return Affine(gamma=params[:channels].copy(), beta=params[channels:].copy())


def _read_batch_norm(stream: _Stream) -> Affine:
    params = stream.tensor().reshape(-1)
    stream.alias()
    stream.alias()
    stream.tensor()  # means of the last training batch
    stream.tensor()  # their inverse std devs
    running_means = stream.tensor().reshape(-1).astype(np.float64)
    running_vars = stream.tensor().reshape(-1).astype(np.float64)
    stream.integer()  # num_updates
    stream.integer()  # running_stats_window_size
    _skip_learning_rates(stream)
    eps = stream.real()
    channels = running_means.size
    if params.size != 2 * channels or running_vars.size != channels:
        raise stream.fail("batch-norm parameter sizes disagree")
    if (running_vars + eps <= 0).any():
        raise stream.fail("batch-norm variance is not positive")
    gamma = params[:channels].astype(np.float64) / np.sqrt(running_vars + eps)
    beta = params[channels:].astype(np.float64) - gamma * running_means
    return Affine(gamma=gamma.astype(np.float32), beta=beta.astype(np.float32))


def _read_pool(stream: _Stream, op: str) -> Pool:
    size = (stream.integer(), stream.integer())
    stride = (stream.integer(), stream.integer())
    padding = (stream.integer(), stream.integer())
    return Pool(op=op, size=size, stride=stride, padding=padding)


def _read_fc(stream: _Stream, version: str) -> FullyConnected:
    outputs = stream.integer()
    inputs = stream.integer()
    params = stream.tensor().reshape(-1)
    weight_shape = stream.alias()
    stream.alias()
    bias_mode = stream.integer()
    _skip_learning_rates(stream)
    use_bias = bias_mode != 1
    if version == "fc_3":
        use_bias = stream.boolean() and use_bias
    if math.prod(weight_shape) != inputs * outputs:
        raise stream.fail("fully connected weight shape disagrees with its sizes")
    expected = inputs * outputs + (outputs if use_bias else 0)
    if params.size < inputs * outputs or (params.size != expected and params.size != (inputs + 1) * outputs):
        raise stream.fail(f"fully connected layer has {params.size} parameters, expected {expected}")
    weight = params[: inputs * outputs].reshape(inputs, outputs)
    bias = params[inputs * outputs : inputs * outputs + outputs].copy() if use_bias else None
    return FullyConnected(weight=weight, bias=bias)


def _read_layer(stream: _Stream) -> Layer:
    version = stream.string()
    if version in ("con_4", "con_5", "con_6"):
        return _read_conv(stream, version)
    if version in ("affine_", "affine_2"):
        return _read_affine(stream, version)
    if version == "bn_con2":
        return _read_batch_norm(stream)
    if version == "relu_":
        return Relu()
    if version == "relu_2":
        if stream.boolean():
            raise stream.fail("disabled relu layers are not supported")
        return Relu()
    if version == "max_pool_2":
        return _read_pool(stream, "max")
    if version == "avg_pool_2":
        return _read_pool(stream, "avg")
    if version in ("fc_2", "fc_3"):
        return _read_fc(stream, version)
    if version == "add_prev_":
        return AddPrev()
    raise stream.fail(f"unsupported layer type {version!r}")


def _read_input(stream: _Stream) -> RgbInput:
    version = stream.string()
    if version == "input_rgb_image_sized":
        mean = (stream.real(), stream.real(), stream.real())
        rows, cols = stream.integer(), stream.integer()
        return RgbInput(mean_rgb=mean, size=(rows, cols))  # type: ignore[arg-type]
    if version == "input_rgb_image_pyramid":
        mean = (stream.real(), stream.real(), stream.real())
        return RgbInput(mean_rgb=mean)  # type: ignore[arg-type]
    if version == "input_rgb_image_pyramid2":
        mean = (stream.real(), stream.real(), stream.real())
        padding, outer = stream.integer(), stream.integer()
        return RgbInput(mean_rgb=mean, pyramid_padding=padding, pyramid_outer_padding=outer)  # type: ignore[arg-type]
    raise stream.fail(f"unsupported input layer {version!r}")


def _read_box_overlap(stream: _Stream) -> tuple[float, float]:
    return stream.real(), stream.real()


def _read_loss(stream: _Stream) -> tuple[str, dict[str, Any]]:
    stream.expect_int(1, "loss layer")
    name = stream.string()
    if name == "loss_metric_2":
        return name, {"margin": stream.real(), "distance_threshold": stream.real()}
    if name == "loss_metric_":
        return name, {}
    if name == "loss_mmod_":
        stream.expect_int(1, "mmod options")
        options = {
            "detector_width": stream.integer(),
            "detector_height": stream.integer(),
            "loss_per_false_alarm": stream.real(),
            "loss_per_missed_target": stream.real(),
            "truth_match_iou_threshold": stream.real(),
            "nms_iou_threshold": 0.0,
            "nms_percent_covered": 0.0,
        }
        options["nms_iou_threshold"], options["nms_percent_covered"] = _read_box_overlap(stream)
        _read_box_overlap(stream)  # the ignore test is only used in training
        return name, options
    raise stream.fail(f"unsupported loss layer {name!r}")


def _read_trailer(stream: _Stream) -> None:
    """The 3 bools and 3 (empty) tensors every add_layer writes after its record."""
    for _ in range(3):
        stream.boolean()
    for _ in range(3):
        stream.tensor()


def parse_network(data: bytes, name: str = "model") -> DlibNetwork:
    """Parse a whole dlib network file; raises ModelFileError if anything is off."""
    stream = _Stream(data, name)
    try:
        loss, options = _read_loss(stream)
        nest: list[int] = []
        while True:
            version = stream.integer()
            if version == 3:
                break
            if version not in (1, 2) or len(nest) > 10_000:
                raise stream.fail(f"layer version {version}")
            nest.append(version)
        net_input = _read_input(stream)
        layers: list[Layer] = [_read_layer(stream)]
        _read_trailer(stream)
        stream.integer()  # sample_expansion_factor
        for version in reversed(nest):
            if version == 1:
                layers.append(Marker())
            else:
                layers.append(_read_layer(stream))
                _read_trailer(stream)
    except (ValueError, OverflowError) as exc:
        raise stream.fail(str(exc)) from None
    if stream.pos != len(stream.data):
        raise stream.fail(f"{len(stream.data) - stream.pos} unexpected bytes after the network")
    return DlibNetwork(loss=loss, loss_options=options, input=net_input, layers=layers)


def load_network(path: str | Path) -> DlibNetwork:
    """Read and parse a dlib network file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    return parse_network(data, name=str(path))


def expect_kinds(network: DlibNetwork, expected: list[str], name: str) -> None:
    """Check that the network's layer sequence is exactly the one a builder wires up."""
    found = network.kinds
    if found != expected:
        for index, (have, want) in enumerate(zip(found, expected, strict=False)):
            if have != want:
                raise ModelFileError(f"{name}: layer {index} is {have}, expected {want}: not the expected network")
        raise ModelFileError(f"{name}: {len(found)} layers, expected {len(expected)}: not the expected network")
