"""The session state record: configuration plus buffers, to and from plain dicts and bytes."""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from dataclasses import dataclass, field, fields, replace
from types import ModuleType
from typing import Any, Literal

import numpy as np

from bncore.backend import Array, to_host
from bncore.errors import ConfigError, NonFiniteError, ShapeError, StateError, ValueRangeError
from bncore.moments import Moments, NanPolicy

__all__ = [
    "BNConfig",
    "BNState",
    "ConventionName",
    "DTypeName",
    "check_count",
    "initial_state",
    "state_from_bytes",
    "state_to_bytes",
]

DTypeName = Literal["float32", "float64"]
ConventionName = Literal["torch", "keras", "onnx"]
_DTYPES = ("float32", "float64")
_CONVENTION_NAMES = ("torch", "keras", "onnx")
_POLICIES = ("reject", "propagate", "omit")
_MAGIC = b"BNS\x01"
# Each convention's own defaults: (eps, momentum in its meaning).
_CONVENTION_DEFAULTS: dict[str, tuple[float, float]] = {
    "torch": (1e-5, 0.1),
    "keras": (1e-3, 0.99),
    "onnx": (1e-5, 0.9),
}
MAX_COUNT = 2**63  # counts (num_batches_tracked) are int64 in every format we write


@dataclass(frozen=True)
class BNConfig:
    """What a BatchNorm layer is, with PyTorch's defaults and meanings.

    ``momentum`` is kept exactly as given, in the meaning of ``convention``: the weight of the
    new batch for ``torch`` (in (0, 1]), the weight of the old value for ``keras`` and ``onnx``
    (in [0, 1)); ``None`` is the cumulative average (every batch weighs the same). The running
    variance is updated with the unbiased batch variance (torch) or the biased one (keras,
    onnx). ``channel_axis`` is 1 (N, C, ...) or -1 (channels-last). ``dtype`` is the buffers'
    dtype. ``for_convention`` fills a convention's own defaults (keras: eps 1e-3, momentum 0.99).
    """

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    channel_axis: int = 1
    dtype: DTypeName = "float32"
    nan_policy: NanPolicy = "reject"
    convention: ConventionName = "torch"
    # Drift thresholds: a fit whose drift exceeds one is flagged (answer, history, metrics).
    drift_max_kl: float | None = None
    drift_max_mean_shift: float | None = None
    drift_metrics: bool = False  # opt-in: export this session's drift as Prometheus gauges

    def __post_init__(self) -> None:
        if isinstance(self.num_features, bool) or not isinstance(self.num_features, int):
            raise ConfigError(f"num_features must be an integer, got {self.num_features!r}")
        if self.num_features < 1:
            raise ConfigError(f"num_features must be >= 1, got {self.num_features}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")
        m = self.momentum
        if m is not None:
            number = isinstance(m, (int, float)) and not isinstance(m, bool)
            if self.convention == "torch" and not (number and 0 < m <= 1):
                raise ConfigError(
                    f"momentum must be in (0, 1] (torch: the weight of the new batch) or null, "
                    f"got {m!r}"
                )
            if self.convention != "torch" and not (number and 0 <= m < 1):
                raise ConfigError(
                    f"momentum must be in [0, 1) ({self.convention}: the weight of the old "
                    f"value) or null, got {m!r}"
                )
        if self.channel_axis not in (1, -1):
            raise ConfigError(f"channel_axis must be 1 or -1, got {self.channel_axis!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.nan_policy not in _POLICIES:
            raise ConfigError(f"nan_policy must be one of {_POLICIES}, got {self.nan_policy!r}")
        if self.convention not in _CONVENTION_NAMES:
            raise ConfigError(
                f"convention must be one of {_CONVENTION_NAMES}, got {self.convention!r}"
            )
        for name in ("drift_max_kl", "drift_max_mean_shift"):
            v = getattr(self, name)
            if v is not None and not (
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
            ):
                raise ConfigError(f"{name} must be a finite number >= 0 or null, got {v!r}")
        if not isinstance(self.drift_metrics, bool):
            raise ConfigError(f"drift_metrics must be a boolean, got {self.drift_metrics!r}")

    @classmethod
    def for_convention(cls, convention: ConventionName = "torch", **given: Any) -> BNConfig:
        """A config whose eps and momentum default to ``convention``'s own (torch 1e-5 and
        0.1, keras 1e-3 and 0.99, onnx 1e-5 and 0.9) where not given."""
        eps, momentum = _CONVENTION_DEFAULTS.get(convention, (1e-5, 0.1))
        given.setdefault("eps", eps)
        given.setdefault("momentum", momentum)
        return cls(convention=convention, **given)

    def ema_weights(self, tracked: int) -> tuple[float, float, bool]:
        """``(w_new, w_old, biased)`` of the running update after ``tracked`` batches:
        ``running = w_new * batch + w_old * running`` with the biased batch variance or the
        unbiased one. torch: (m, 1 - m); keras/onnx: (1 - m, m), the formulas as each framework
        writes them, with the momentum as given; None: (1/tracked, 1 - 1/tracked)."""
        fixed = self._fixed_ema_weights
        if fixed is not None:
            return fixed
        f = 1.0 / tracked
        return f, 1.0 - f, self.convention != "torch"

    @functools.cached_property
    def _fixed_ema_weights(self) -> tuple[float, float, bool] | None:
        # Computed once per config (cached_property writes the instance dict, which a frozen
        # dataclass allows); None for the cumulative average, whose weights change per fit.
        m = self.momentum
        if m is None:
            return None
        if self.convention != "torch":
            return 1.0 - m, m, True
        return m, 1.0 - m, False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (all are scalars: no deep copy needed)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BNConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"unknown config field(s): {', '.join(extra)}")
        try:
            return cls(**d)
        except TypeError as exc:  # a required field is missing
            raise ConfigError(str(exc)) from None


@dataclass(frozen=True, init=False)
class BNState:
    """A BatchNorm layer's state. Buffers are (C,) arrays in ``config.dtype``; ``weight`` and
    ``bias`` are None without ``affine``, the running buffers None without
    ``track_running_stats``. ``population`` holds the exact float64 moments of all fitted data."""

    config: BNConfig
    weight: Array | None
    bias: Array | None
    running_mean: Array | None
    running_var: Array | None
    num_batches_tracked: int
    population: Moments
    # Memo of values derived from this (immutable) state, e.g. the inference scale and shift.
    derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __init__(
        self,
        config: BNConfig,
        weight: Array | None,
        bias: Array | None,
        running_mean: Array | None,
        running_var: Array | None,
        num_batches_tracked: int,
        population: Moments,
    ) -> None:
        # The instance dict filled directly, not the frozen __init__'s object.__setattr__ per
        # field (every fit builds one, and a small fit's whole budget is some 10 us).
        d = self.__dict__
        d["config"], d["weight"], d["bias"] = config, weight, bias
        d["running_mean"], d["running_var"] = running_mean, running_var
        d["num_batches_tracked"], d["population"], d["derived"] = (
            num_batches_tracked,
            population,
            {},
        )

    def buffers(self) -> dict[str, Array]:
        """The PyTorch ``state_dict`` tensors that exist for this configuration, by name."""
        out: dict[str, Array] = {}
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_host(self) -> BNState:
        """The same state with every array on the host (NumPy)."""
        pop = self.population
        buffers: dict[str, Any] = {k: to_host(v) for k, v in self.buffers().items()}
        return replace(
            self,
            **buffers,
            population=Moments(to_host(pop.count), to_host(pop.mean), to_host(pop.m2)),
        )

    def to_device(self, xp: ModuleType) -> BNState:
        """The same state with every array in namespace ``xp``."""
        pop = self.population
        buffers: dict[str, Any] = {k: xp.asarray(v) for k, v in self.buffers().items()}
        return replace(
            self,
            **buffers,
            population=Moments(xp.asarray(pop.count), xp.asarray(pop.mean), xp.asarray(pop.m2)),
        )


def _vector(name: str, value: Any, c: int, dtype: Any, xp: ModuleType, finite: bool) -> Array:
    try:
        arr = xp.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{name} must be a list of {c} numbers ({exc})") from None
    if arr.shape != (c,):
        raise ShapeError(f"{name} must have shape ({c},), got {tuple(arr.shape)}")
    if finite and not bool(xp.isfinite(arr).all()):
        raise NonFiniteError([int(i) for i in xp.nonzero(~xp.isfinite(arr))[0].tolist()], name)
    return arr  # type: ignore[no-any-return]


def initial_state(
    config: BNConfig,
    *,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    num_batches_tracked: int = 0,
    population: Moments | None = None,
    xp: ModuleType = np,
    finite: bool = True,
) -> BNState:
    """A state with running_mean 0, running_var 1, weight 1, bias 0 unless given.

    Given values must be finite unless ``finite=False`` (a stored state may hold the NaN that
    ``nan_policy='propagate'`` let in)."""
    c, dt = config.num_features, np.dtype(config.dtype)

    def vec(name: str, value: Any, default: float, enabled: bool) -> Array | None:
        if not enabled:
            if value is not None:
                raise ConfigError(f"{name} given but the configuration has no {name}")
            return None
        if value is None:
            return xp.full(c, default, dtype=dt)  # type: ignore[no-any-return]
        return _vector(name, value, c, dt, xp, finite)

    track = config.track_running_stats
    rv = vec("running_var", running_var, 1.0, track)
    if rv is not None and bool((rv < 0).any()):  # NaN compares False: allowed when not finite
        raise ValueRangeError("running_var must be >= 0")
    check_count("num_batches_tracked", num_batches_tracked)
    return BNState(
        config=config,
        weight=vec("weight", weight, 1.0, config.affine),
        bias=vec("bias", bias, 0.0, config.affine),
        running_mean=vec("running_mean", running_mean, 0.0, track),
        running_var=rv,
        num_batches_tracked=int(num_batches_tracked),
        population=population if population is not None else Moments.zeros(c, xp),
    )


def check_count(name: str, value: Any) -> int:
    """``value`` as a count: an integer (not a bool, not a float) in [0, 2**63)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueRangeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= int(value) < MAX_COUNT:
        raise ValueRangeError(f"{name} must be in [0, 2**63), got {value}")
    return int(value)


_ORDER = ("weight", "bias", "running_mean", "running_var")
_POP = ("pop_count", "pop_mean", "pop_m2")
_COUNT_KEY = b'"num_batches_tracked":'
_F64 = np.dtype(np.float64)
_HEAD_LEN = struct.Struct("<I")
# The record's arrays are little-endian: on a little-endian host native arrays go as they are.
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class _Layout:
    """What a record's header says besides the count, parsed once per distinct header: the
    header around the count, and each array's name, dtype and byte range."""

    config: BNConfig
    prefix: bytes  # the header up to and including '"num_batches_tracked":'
    suffix: bytes  # the header after the count
    arrays: tuple[tuple[str, np.dtype[Any], int, int], ...]  # name, dtype, start, end
    size: int  # bytes of the whole record, header included


def _layout(config: BNConfig, arrays: list[list[str]]) -> _Layout:
    head = json.dumps(
        {"config": config.to_dict(), "num_batches_tracked": 0, "arrays": arrays},
        separators=(",", ":"),
    ).encode()
    at = head.index(_COUNT_KEY) + len(_COUNT_KEY)
    c, offset, spans = config.num_features, 8 + len(head), []
    for name, dtype in arrays:
        dt = np.dtype(dtype)
        spans.append((name, dt, offset, offset + c * dt.itemsize))
        offset += c * dt.itemsize
    return _Layout(config, head[:at], head[at + 1 :], tuple(spans), offset)


def _own_layout(config: BNConfig) -> _Layout:
    """The layout of this config's records when every buffer is in ``config.dtype`` (always,
    unless a caller built a state by hand), memoized on the (immutable) config."""
    found: _Layout | None = config.__dict__.get("_record_layout")
    if found is None:
        dt = np.dtype(config.dtype).newbyteorder("<").str
        names = [n for n, on in zip(_ORDER, _enabled(config), strict=True) if on]
        found = _layout(config, [[n, dt] for n in names] + [[n, "<f8"] for n in _POP])
        config.__dict__["_record_layout"] = found  # frozen: the instance dict, like a cache
    return found


def _enabled(config: BNConfig) -> tuple[bool, bool, bool, bool]:
    track = config.track_running_stats
    return config.affine, config.affine, track, track


def state_to_bytes(state: BNState) -> bytes:
    """Compact record: magic, u32 header length, JSON header, then raw little-endian arrays."""
    # The common case: host arrays in the layout's dtypes, written as they are (the header
    # around the count cached per config): no copies and no JSON per record. Every SQLite
    # commit encodes one: the checks are inline (no tuples, no generator: ~1 us of ~3).
    config = state.config
    layout: _Layout | None = config.__dict__.get("_record_layout")
    if layout is None:
        layout = _own_layout(config)
    pop = state.population
    arrays: list[Any] = []
    # The buffers the config has, in _ORDER (one it has not, set by hand: the general path).
    w, b, rm, rv = state.weight, state.bias, state.running_mean, state.running_var
    if config.affine:
        arrays += [w, b]
    elif w is not None or b is not None:
        return _record(state)
    if config.track_running_stats:
        arrays += [rm, rv]
    elif rm is not None or rv is not None:
        return _record(state)
    dt = layout.arrays[0][1]  # every buffer's dtype; the population's are float64
    for a in arrays:  # a None (a state built by hand) fails the type check
        if type(a) is not np.ndarray or not (a.dtype is dt or a.dtype == dt):
            return _record(state)
    arrays += [pop.count, pop.mean, pop.m2]
    for a in arrays[-3:]:
        if type(a) is not np.ndarray or not (a.dtype is _F64 or a.dtype == _F64):
            return _record(state)
    if _LITTLE:
        head = b"%s%d%s" % (layout.prefix, state.num_batches_tracked, layout.suffix)
        try:
            return b"".join([_MAGIC, _HEAD_LEN.pack(len(head)), head, *arrays])
        except TypeError:  # a non-contiguous view: the general path copies it
            pass
    return _record(state)


def _record(state: BNState) -> bytes:
    host = state.to_host()
    arrays: list[tuple[str, np.ndarray[Any, Any]]] = list(host.buffers().items())
    pop = host.population
    arrays += [("pop_count", pop.count), ("pop_mean", pop.mean), ("pop_m2", pop.m2)]
    header = {
        "config": state.config.to_dict(),
        "num_batches_tracked": state.num_batches_tracked,
        "arrays": [[name, a.dtype.newbyteorder("<").str] for name, a in arrays],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [_MAGIC, struct.pack("<I", len(head)), head]
    parts += [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for _, a in arrays]
    return b"".join(parts)


# Layouts of the records read so far, by the header up to the count (bounded: cleared when
# full; configs are few).
_READ: dict[bytes, _Layout] = {}
_READ_MAX = 4096


def state_from_bytes(data: bytes, xp: ModuleType = np) -> BNState:
    """Inverse of ``state_to_bytes``; raises ``StateError`` on any inconsistency."""
    if xp is np and _LITTLE and type(data) is bytes:
        found = _known_record(data)
        if found is not None:
            return found
    try:
        if data[:4] != _MAGIC:
            raise StateError("not a bncore state record (bad magic)")
        (hlen,) = struct.unpack_from("<I", data, 4)
        header = json.loads(data[8 : 8 + hlen])
        config = BNConfig.from_dict(header["config"])
        c = config.num_features
        offset = 8 + hlen
        found_arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, dtype in header["arrays"]:
            dt = np.dtype(dtype)
            arr = np.frombuffer(data, dtype=dt, count=c, offset=offset)
            found_arrays[name] = arr.astype(dt.newbyteorder("="))
            offset += c * dt.itemsize
        if offset != len(data):
            raise StateError(f"state record has {len(data) - offset} trailing byte(s)")
        pop = Moments(*(xp.asarray(found_arrays.pop(k)) for k in _POP))
        state = initial_state(
            config,
            **{k: found_arrays.get(k) for k in _ORDER},
            num_batches_tracked=int(header["num_batches_tracked"]),
            population=pop,
            xp=xp,
            finite=False,
        )
    except (KeyError, ValueError, TypeError, struct.error) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"corrupt state record: {exc}") from None
    if xp is np and _LITTLE and type(data) is bytes:
        _remember(data, state.config)
    return state


def _count_span(data: bytes) -> tuple[int, int, int] | None:
    """(header end, count start, count end) of a record whose header has the count where
    ``state_to_bytes`` puts it; None for anything else."""
    if len(data) < 8 or not data.startswith(_MAGIC):
        return None
    end = 8 + _HEAD_LEN.unpack_from(data, 4)[0]
    start = data.find(_COUNT_KEY, 8, end)
    if start < 0:
        return None
    start += len(_COUNT_KEY)
    stop = data.find(b",", start, end)
    return (end, start, stop) if stop > start else None


def _remember(data: bytes, config: BNConfig) -> None:
    """Keep the layout of a record that the general path read (and so validated), when it is
    the one ``state_to_bytes`` writes for its config (buffers in the config's dtype)."""
    span = _count_span(data)
    if span is None:
        return
    end, start, stop = span
    layout = _own_layout(config)
    if layout.prefix != data[8:start] or layout.suffix != data[stop:end]:
        return  # another layout: always the general path
    if len(_READ) >= _READ_MAX:
        _READ.clear()
    _READ[layout.prefix] = layout


def _known_record(data: bytes) -> BNState | None:
    """A record with a header already read once: the count parsed, the arrays copied out in
    one piece, no JSON and no config validation; None when the header is new (the general
    path reads it)."""
    span = _count_span(data)
    if span is None:
        return None
    end, start, stop = span
    layout = _READ.get(data[8:start])
    if layout is None or len(data) != layout.size or data[stop:end] != layout.suffix:
        return None
    digits = data[start:stop]
    if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):  # JSON: no leading 0
        return None
    tracked = int(digits)
    config, c = layout.config, layout.config.num_features
    first, cut = layout.arrays[0][2], layout.arrays[-3][2]  # the buffers', the population's
    # One copy of all arrays (aligned: the buffers first, then the float64 population),
    # each array a row of its dtype's block.
    raw = np.frombuffer(data, np.uint8, layout.size - first, first).copy()
    k = len(layout.arrays) - 3
    pop = raw[cut - first :].view(_F64).reshape(3, c)
    rows = raw[: cut - first].view(layout.arrays[0][1]).reshape(k, c)
    if config.track_running_stats:
        rm, rv = rows[k - 2], rows[k - 1]
        if bool((rv < 0).any()):
            return None  # the general path names the error
    else:
        rm = rv = None
    weight, bias = (rows[0], rows[1]) if config.affine else (None, None)
    if tracked >= MAX_COUNT:
        return None
    return BNState(config, weight, bias, rm, rv, tracked, Moments(pop[0], pop[1], pop[2]))
