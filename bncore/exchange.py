"""Statistics exchange: a state as plain documents in PyTorch, Keras, ONNX and scikit-learn
terms, and back, bit for bit.

Each export carries what its format cannot say in a ``bnaas`` member (Keras, ONNX) or in the
safetensors metadata: the session's convention, its momentum exactly as given,
``num_batches_tracked``, the channel axis and the population moments (count, mean and M2, so
that nothing is recomputed on import). Imports validate every value before a state is built:
counts are integers in [0, 2**63), eps and momentum finite and in their domain, buffers finite
(NaN only for ``nan_policy='propagate'``), variances >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from bncore.backend import namespace, to_host
from bncore.errors import ConfigError, ShapeError, ValueRangeError
from bncore.moments import Moments
from bncore.presets import CONVENTIONS
from bncore.state import BNConfig, BNState, check_count, initial_state

__all__ = ["Format", "export_doc", "import_doc", "merge_population", "partial_moments"]

Format = Literal["json", "keras", "onnx"]
_BUFFERS = ("weight", "bias", "running_mean", "running_var")
# Config members an import may carry; everything else about the layer is fixed at creation.
_RESTORED = ("eps", "momentum", "convention", "channel_axis")


def _floats(a: Any) -> list[float | None]:
    """Host values as a JSON list (NaN as null: JSON has no NaN)."""
    return [None if math.isnan(v) else v for v in to_host(a).tolist()]


def _population(state: BNState) -> dict[str, Any]:
    """count, mean, biased var (for readers) and M2 (what an import restores exactly)."""
    pop = state.population
    return {
        "count": _floats(pop.count),
        "mean": _floats(pop.mean),
        "var": _floats(pop.var),
        "m2": _floats(pop.m2),
    }


def _extra(state: BNState) -> dict[str, Any]:
    """What no framework's format says: enough to restore the session exactly."""
    cfg = state.config
    return {
        "convention": cfg.convention,
        "momentum": cfg.momentum,
        "eps": cfg.eps,
        "channel_axis": cfg.channel_axis,
        "num_batches_tracked": state.num_batches_tracked,
        "population": _population(state),
    }


def _momentum_in(state: BNState, convention: str) -> float:
    """The session's momentum in another convention's meaning (1 - m between torch and the
    others); a cumulative average (None) exists in none of the frameworks' configs."""
    m = state.config.momentum
    if m is None:
        raise ConfigError(
            f"the session's momentum is null (cumulative average), which {convention} cannot "
            "express; export ?format=json or safetensors instead (they keep null), or recreate "
            "the session with a numeric momentum"
        )
    if (state.config.convention == "torch") == (convention == "torch"):
        return m
    return 1.0 - m


def export_doc(state: BNState, fmt: Format) -> dict[str, Any]:
    """The state as a JSON-ready document: ``json`` in PyTorch's names (plus ``eps``,
    ``momentum`` as given, ``convention``, ``channel_axis`` and ``population``), ``keras``
    (gamma, beta, moving_mean, moving_variance, momentum, epsilon, axis) or ``onnx`` (scale,
    B, input_mean, input_var, momentum, epsilon; scale 1 and B 0 without affine, as ONNX
    requires them); the last two add ``bnaas`` (see the module doc)."""
    cfg = state.config
    buffers = {k: _floats(v) for k, v in state.buffers().items()}
    if fmt == "json":
        return {
            **buffers,
            "num_batches_tracked": state.num_batches_tracked,
            "eps": cfg.eps,
            "momentum": cfg.momentum,
            "convention": cfg.convention,
            "channel_axis": cfg.channel_axis,
            "population": _population(state),
        }
    if fmt not in ("keras", "onnx"):
        raise ConfigError(f"unknown format {fmt!r}")
    if not cfg.track_running_stats:
        raise ConfigError(
            f"{fmt} layers always hold running statistics and this session does not track "
            "them (track_running_stats false): export ?format=json instead"
        )
    names = CONVENTIONS[fmt].names
    doc: dict[str, Any] = {}
    if fmt == "onnx" and not cfg.affine:
        ones: list[float | None] = [1.0] * cfg.num_features
        zeros: list[float | None] = [0.0] * cfg.num_features
        buffers = {"weight": ones, "bias": zeros, **buffers}
    for k, v in buffers.items():
        doc[names[k]] = v
    doc["momentum"] = _momentum_in(state, fmt)
    doc["epsilon"] = cfg.eps
    if fmt == "keras":
        doc["axis"] = cfg.channel_axis
        doc["center"] = doc["scale"] = cfg.affine
    doc["bnaas"] = _extra(state)
    return doc


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueRangeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueRangeError(f"{name} must be finite, got {value!r}")
    return value


def _vector(name: str, value: Any, c: int, allow_nan: bool) -> np.ndarray[Any, Any]:
    """A list of C numbers (null = NaN where the session lets NaN in) as float64."""
    if isinstance(value, np.ndarray):
        arr = value
        if arr.dtype.kind not in "fiu":
            raise ShapeError(f"{name} must hold numbers, got dtype {arr.dtype.name}")
        arr = arr.astype(np.float64)
    else:
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not (v is None or isinstance(v, (int, float))) for v in value
        ):
            raise ShapeError(f"{name} must be a list of {c} numbers")
        arr = np.array([math.nan if v is None else v for v in value], dtype=np.float64)
    if arr.shape != (c,):
        raise ShapeError(f"{name} must have shape ({c},), got {tuple(arr.shape)}")
    if np.isinf(arr).any() or (np.isnan(arr).any() and not allow_nan):
        raise ValueRangeError(
            f"{name} must be finite (NaN only in a nan_policy 'propagate' session)"
        )
    return arr


def _population_in(value: Any, c: int, allow_nan: bool) -> Moments:
    if not isinstance(value, Mapping):
        raise ShapeError("population must be an object with count, mean and m2 (or var)")
    unknown = sorted(set(value) - {"count", "mean", "var", "m2"})
    if unknown:
        raise ShapeError(f"unknown population member(s): {', '.join(unknown)}")
    return partial_moments(
        value.get("count"), value.get("mean"), m2=value.get("m2"), var=value.get("var"),
        num_features=c, allow_nan=allow_nan, what="population",
    )  # fmt: skip


def partial_moments(
    count: Any,
    mean: Any,
    *,
    m2: Any = None,
    var: Any = None,
    num_features: int,
    allow_nan: bool = False,
    what: str = "moments",
) -> Moments:
    """Validated ``Moments`` from ``count`` (one integer, or one per channel), ``mean`` and
    either ``m2`` (sum of squared deviations) or ``var`` (biased, M2 / count); M2 wins where
    both are given. Counts are integers in [0, 2**63); where a count is 0 the mean and M2 are
    ignored (no data)."""
    c = num_features
    if count is None or mean is None or (m2 is None and var is None):
        raise ShapeError(f"{what} needs count, mean and m2 (or var)")
    if isinstance(count, (list, np.ndarray)):
        counts = _vector(f"{what} count", count, c, False)
    else:
        counts = np.full(c, float(check_count(f"{what} count", count)))
    if ((counts < 0) | (counts >= 2.0**63) | (counts != np.floor(counts))).any():
        raise ValueRangeError(f"{what} count must hold integers in [0, 2**63)")
    means = _vector(f"{what} mean", mean, c, allow_nan)
    if m2 is not None:
        m2s = _vector(f"{what} m2", m2, c, allow_nan)
    else:
        m2s = _vector(f"{what} var", var, c, True) * counts
        if not allow_nan:
            m2s = np.where(counts > 0, m2s, 0.0)
            if np.isnan(m2s).any():
                raise ValueRangeError(f"{what} var must be finite where count > 0")
    if (m2s < 0).any():
        raise ValueRangeError(f"{what} m2 and var must be >= 0")
    empty = counts == 0
    return Moments(counts, np.where(empty, 0.0, means), np.where(empty, 0.0, m2s))


def merge_population(state: BNState, moments: Moments) -> BNState:
    """The state with ``moments`` (validated by ``partial_moments``; from an offline job or
    another session) merged into its population with Chan's formula; the running statistics
    and ``num_batches_tracked`` are untouched."""
    c = state.config.num_features
    if moments.mean.shape != (c,):
        raise ShapeError(f"moments must have {c} values per member")
    xp = namespace(state.population.mean)
    other = Moments(xp.asarray(moments.count), xp.asarray(moments.mean), xp.asarray(moments.m2))
    from dataclasses import replace

    return replace(state, population=state.population.merge(other))


def _theirs(doc: Mapping[str, Any], fmt: Format) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a Keras/ONNX document into our buffer names and its other members."""
    names = {v: k for k, v in CONVENTIONS[fmt].names.items()}
    buffers: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    allowed = {"momentum", "epsilon", "bnaas"} | (
        {"axis", "center", "scale"} if fmt == "keras" else set()
    )
    for key, value in doc.items():
        if key in names:
            buffers[names[key]] = value
        elif key in allowed:
            rest[key] = value
        else:
            raise ConfigError(f"unknown {fmt} member {key!r}")
    return buffers, rest


def _config_from(
    state: BNState, doc: Mapping[str, Any], fmt: Format, overrides: Mapping[str, Any]
) -> tuple[BNConfig, dict[str, Any]]:
    """The imported config and the members that say about the rest (counts, population)."""
    cfg = state.config.to_dict()
    meta: dict[str, Any] = {}
    if fmt == "json":
        given = {k: doc[k] for k in _RESTORED if k in doc}
        meta = {k: doc[k] for k in ("num_batches_tracked", "population") if k in doc}
    else:
        _, rest = _theirs(doc, fmt)
        extra = rest.get("bnaas")
        given = {}
        if "epsilon" in rest:
            given["eps"] = rest["epsilon"]
        if "axis" in rest:
            given["channel_axis"] = rest["axis"]
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise ConfigError("bnaas must be an object")
            unknown = sorted(set(extra) - {*_RESTORED, "num_batches_tracked", "population"})
            if unknown:
                raise ConfigError(f"unknown bnaas member(s): {', '.join(unknown)}")
            # exact: the session's own convention and momentum, as given
            given.update({k: extra[k] for k in _RESTORED if k in extra})
            meta = {k: extra[k] for k in ("num_batches_tracked", "population") if k in extra}
        elif "momentum" in rest:
            m = _number("momentum", rest["momentum"])
            # Keras and ONNX momentum is the old value's weight: as is in a keras/onnx session
            given["momentum"] = m if cfg["convention"] != "torch" else 1.0 - m
    given.update(overrides)
    for key in ("eps", "momentum"):
        if given.get(key) is not None:
            _number(key, given[key])
    cfg.update(given)
    return BNConfig.from_dict(cfg), meta


def import_doc(
    state: BNState,
    doc: Mapping[str, Any],
    fmt: Format = "json",
    overrides: Mapping[str, Any] | None = None,
) -> BNState:
    """A new state from ``doc`` (what ``export_doc`` writes, in any subset: absent members are
    kept). ``overrides`` (eps, momentum) win over the document. Raises a ``BNError`` naming
    the first bad value; ``state`` is never changed."""
    if not isinstance(doc, Mapping):
        raise ShapeError(f"{fmt} stats must be a JSON object")
    if fmt == "json":
        known = {*_BUFFERS, *_RESTORED, "num_batches_tracked", "population"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown stats member(s): {', '.join(unknown)}")
        buffers = {k: doc[k] for k in _BUFFERS if k in doc}
    elif fmt in ("keras", "onnx"):
        buffers, rest = _theirs(doc, fmt)
        if fmt == "keras" and any(
            k in rest and not isinstance(rest[k], bool) for k in ("center", "scale")
        ):
            raise ConfigError("keras center and scale must be booleans")
    else:
        raise ConfigError(f"unknown format {fmt!r}")
    config, meta = _config_from(state, doc, fmt, overrides or {})
    c = config.num_features
    allow_nan = config.nan_policy == "propagate"
    if fmt == "onnx" and not config.affine:
        # ONNX always has scale and B: an affine-free layer's are 1 and 0
        for name, neutral in (("weight", 1.0), ("bias", 0.0)):
            if (
                name in buffers
                and not (_vector(name, buffers.pop(name), c, False) == neutral).all()
            ):
                raise ConfigError(
                    f"the session has no affine {name} (affine false): ONNX's "
                    f"{CONVENTIONS['onnx'].names[name]} must be all {neutral}"
                )
    values: dict[str, Any] = {}
    for name in _BUFFERS:
        if name in buffers:
            values[name] = _vector(name, buffers[name], c, allow_nan)
        else:
            values[name] = getattr(state, name)
    if "running_var" in buffers and bool((values["running_var"] < 0).any()):
        raise ValueRangeError("running_var must be >= 0")
    tracked = state.num_batches_tracked
    if "num_batches_tracked" in meta:
        tracked = check_count("num_batches_tracked", meta["num_batches_tracked"])
    population = state.population
    if "population" in meta:
        population = _population_in(meta["population"], c, allow_nan)
    xp = namespace(state.population.mean)
    pop = Moments(
        xp.asarray(population.count), xp.asarray(population.mean), xp.asarray(population.m2)
    )
    return initial_state(
        config,
        **values,
        num_batches_tracked=tracked,
        population=pop,
        xp=xp,
        finite=False,  # checked above: NaN only where the session's policy lets it in
    )


def export_tensors(state: BNState, prefix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """A ``torch.nn.BatchNorm*d`` state_dict (strict loading works; keys under ``prefix``,
    e.g. ``features.1.``) and string metadata: ``eps``, ``momentum`` (JSON, as given),
    ``convention``, ``channel_axis`` and ``population`` (JSON)."""
    import orjson

    host = state.to_host()
    tensors: dict[str, Any] = {prefix + k: v for k, v in host.buffers().items()}
    if host.config.track_running_stats:
        tensors[prefix + "num_batches_tracked"] = np.array(host.num_batches_tracked, np.int64)
    cfg = host.config
    meta = {
        "format": "pt",
        "eps": orjson.dumps(cfg.eps).decode(),
        "momentum": orjson.dumps(cfg.momentum).decode(),
        "convention": cfg.convention,
        "channel_axis": str(cfg.channel_axis),
        "num_batches_tracked": str(host.num_batches_tracked),
        "population": orjson.dumps(_population(host)).decode(),
    }
    return tensors, meta


def import_tensors(
    state: BNState,
    tensors: Mapping[str, Any],
    meta: Mapping[str, str],
    prefix: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[BNState, dict[str, Any]]:
    """Inverse of ``export_tensors``: the new state and what was assumed (``eps`` and
    ``momentum`` kept from the session when neither the metadata nor ``overrides`` give them,
    as a plain torch ``state_dict`` file does not)."""
    import orjson

    doc: dict[str, Any] = {}
    for key, arr in tensors.items():
        if not key.startswith(prefix):
            raise ShapeError(f"tensor {key!r} is not under the prefix {prefix!r}")
        name = key[len(prefix) :]
        if name == "num_batches_tracked":
            doc[name] = _count_tensor(arr)
        elif name in _BUFFERS:
            doc[name] = np.asarray(arr)
        else:
            raise ShapeError(f"unknown tensor {key!r} (expected {prefix}weight, ...)")
    try:
        for key in ("eps", "momentum", "population"):
            if key in meta:
                doc[key] = orjson.loads(meta[key])
        if "channel_axis" in meta:
            doc["channel_axis"] = orjson.loads(meta["channel_axis"])
        if "num_batches_tracked" in meta and "num_batches_tracked" not in doc:
            doc["num_batches_tracked"] = orjson.loads(meta["num_batches_tracked"])
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"safetensors metadata is not JSON: {exc}") from None
    if "convention" in meta:
        doc["convention"] = meta["convention"]
    overrides = dict(overrides or {})
    assumed = {
        k: getattr(state.config, k)
        for k in ("eps", "momentum")
        if k not in doc and k not in overrides
    }
    return import_doc(state, doc, "json", overrides), assumed


def _count_tensor(arr: Any) -> int:
    """num_batches_tracked from a tensor: one integer value in [0, 2**63) (torch writes an
    int64 scalar; an integral float is taken, 1e30 or NaN are not)."""
    a = np.asarray(arr)
    if a.size != 1 or a.ndim > 1:
        raise ValueRangeError(f"num_batches_tracked must be one value, got shape {list(a.shape)}")
    v = a.reshape(()).item()
    if isinstance(v, float):
        if not (math.isfinite(v) and v == math.floor(v) and 0 <= v < 2.0**63):
            raise ValueRangeError(f"num_batches_tracked must be an integer in [0, 2**63), got {v}")
        v = int(v)
    return check_count("num_batches_tracked", v)
