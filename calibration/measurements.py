"""Per-layer measurements that calibration fits: read from a CSV, a trace database or a lookup table.

CSV format (one row per measured layer run; header required, column order free, ``#`` lines are comments)::

    network,layer,kind,c_in,c_out,kernel,stride,groups,in_h,in_w,out_h,out_w,batch,wbits,abits,latency_s,energy_j

* ``kind`` (optional): conv, depthwise or linear; if absent, depthwise when ``groups == c_in == c_out > 1``,
  linear when a 1x1 kernel maps a 1x1 input, else conv.
* ``kernel``/``stride``: one int (square) or ``KHxKW``.
* ``wbits``: one int for the whole layer, or kernel-wise: ``;``-separated, one per output channel.
* ``latency_s``: seconds for the whole batch; ``energy_j`` (optional, may be empty): joules for the whole batch.

The CSV that ``autoq trace FILE --export csv`` writes (``autoq.host.traces.CSV_COLUMNS``: one row per recorded
measurement, whole-network totals, the plan only by its hash) is read too, by its header: each row becomes one
whole-network sample (its latency and energy are the sums over the network's layers). The network is resolved by
name (a built-in architecture or ``digits``) and must have the recorded hash; the plan must be uniform (rebuilt from
the average bits and checked against the recorded hash). Anything else needs the trace database itself, which holds
every network and plan.

Which input is which is decided by ``load_samples`` from the file name: ``.csv`` or a trace database
(``.sqlite``/``.db``, ``autoq.host.traces``). A lookup table (HAQ layout, ``[layer, wbits-1, abits-1]``) needs the
network's layers and is read by ``samples_from_lookup_table``; ``BUNDLED_TABLES`` names the tables shipped in
``autoq.calibration`` (``lookup_table_path``).
"""
from __future__ import annotations

import csv
import io
import math
from importlib import resources
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence, cast

import numpy as np

from autoq.common.errors import AutoQError, SpecError
from autoq.common.fileio import atomic_write_text
from autoq.common.network import LayerKind, LayerSpec, NetworkSpec, conv_kind

REQUIRED_COLUMNS = ("network", "layer", "c_in", "c_out", "kernel", "stride", "groups", "in_h", "in_w", "out_h", "out_w",
                    "batch", "wbits", "abits", "latency_s")
OPTIONAL_COLUMNS = ("kind", "energy_j")
TRACE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


class MeasurementError(AutoQError, ValueError):
    """Measurement input is missing, malformed or does not fit the network it claims to measure."""


class Sample(NamedTuple):
    """One measured run of one layer. ``key`` names the layer (network/layer) for leave-one-layer-out. A
    whole-network measurement lists the network's other layers in ``more`` (layer, weight bits, act bits); its
    latency and energy are the sums over all of them, and its key names the network."""

    layer: LayerSpec
    weight_bits: tuple[int, ...]
    act_bits: int
    batch: int
    latency_s: float
    energy_j: float  # nan when not measured
    key: str
    more: tuple[tuple[LayerSpec, tuple[int, ...], int], ...] = ()

    @property
    def parts(self) -> tuple[tuple[LayerSpec, tuple[int, ...], int], ...]:
        """Every (layer, weight bits, act bits) the measurement covers."""
        return ((self.layer, self.weight_bits, self.act_bits), *self.more)


class Dataset(NamedTuple):
    """Samples and where they come from. ``predicted`` is empty when every latency is a measurement (of hardware,
    the RTL simulation, or an external measurement file), else says which were a model's predictions: a fit on
    them is not a calibration. ``measured_by`` names the kinds of measurement (board, rtlsim, CSV, ...)."""

    samples: tuple[Sample, ...]
    source: str
    predicted: str = ""
    measured_by: tuple[str, ...] = ()

    @property
    def layer_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.key for s in self.samples))


def _pair(text: str, what: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise MeasurementError(f"{what} must be an int or KHxKW, got {text!r}") from None
    return a, b


def _infer_kind(c_in: int, groups: int, kernel: tuple[int, int], in_hw: tuple[int, int]) -> LayerKind:
    if groups == 1 and kernel == (1, 1) and in_hw == (1, 1):
        return "linear"
    return conv_kind(c_in, groups)


def _row_sample(row: dict[str, str], where: str) -> Sample:
    try:
        c_in, c_out, groups = int(row["c_in"]), int(row["c_out"]), int(row["groups"])
        in_hw, out_hw = (int(row["in_h"]), int(row["in_w"])), (int(row["out_h"]), int(row["out_w"]))
        kernel, stride = _pair(row["kernel"], "kernel"), _pair(row["stride"], "stride")
        batch, act_bits = int(row["batch"]), int(row["abits"])
        wbits = tuple(int(b) for b in row["wbits"].split(";"))
        latency = float(row["latency_s"])
        energy_text = (row.get("energy_j") or "").strip()
        energy = float(energy_text) if energy_text else math.nan
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"{where}: {exc}") from None
    # the CSV's kind is unchecked text: LayerSpec rejects anything but a LayerKind, naming it
    kind = cast(LayerKind, (row.get("kind") or "").strip() or _infer_kind(c_in, groups, kernel, in_hw))
    try:
        layer = LayerSpec(row["layer"], kind, c_in, c_out, kernel, stride, (0, 0), groups, in_hw, out_hw)
    except SpecError as exc:
        raise MeasurementError(f"{where}: {exc}") from None
    if len(wbits) == 1:
        wbits = wbits * c_out
    if len(wbits) != c_out:
        raise MeasurementError(f"{where}: {len(wbits)} kernel bit-widths for {c_out} output channels")
    if batch < 1 or not latency > 0 or not math.isfinite(latency):
        raise MeasurementError(f"{where}: batch must be >= 1 and latency_s a positive number")
    if not (math.isnan(energy) or energy > 0):
        raise MeasurementError(f"{where}: energy_j must be a positive number or empty")
    if min(wbits) < 1 or act_bits < 1:
        raise MeasurementError(f"{where}: bit-widths must be >= 1")
    return Sample(layer, wbits, act_bits, batch, latency, energy, f"{row['network']}/{row['layer']}")


def read_measurements_csv(path: str | Path) -> Dataset:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MeasurementError(f"cannot read measurements {path}: {exc.strerror}") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    columns = [c.strip() for c in reader.fieldnames or []]
    if tuple(columns) == _trace_csv_columns():
        return _trace_export_samples(path, list(reader))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise MeasurementError(f"{path}: CSV columns: missing {missing}, unknown {unknown}; "
                               f"expected {', '.join(REQUIRED_COLUMNS)} [, {', '.join(OPTIONAL_COLUMNS)}], "
                               "or the columns `autoq trace --export csv` writes")
    reader.fieldnames = columns
    samples = []
    for number, row in enumerate(reader, start=2):
        if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
            raise MeasurementError(f"{path}: data row {number - 1} has {len([v for v in row.values() if v is not None])} "
                                   f"fields, the header has {len(columns)}")
        samples.append(_row_sample(row, f"{path}: data row {number - 1}"))
    if not samples:
        raise MeasurementError(f"{path}: no measurements")
    return Dataset(tuple(samples), f"CSV {Path(path).name}", measured_by=("CSV",))


def _trace_csv_columns() -> tuple[str, ...]:
    from autoq.host.traces import CSV_COLUMNS  # standard library only, like this module

    return tuple(CSV_COLUMNS)


def _trace_export_samples(path: str | Path, rows: list[dict[str, str]]) -> Dataset:
    """Whole-network samples from the rows of ``autoq trace --export csv`` (see the module docstring)."""
    from autoq.common.plan import QuantPlan

    networks: dict[str, NetworkSpec] = {}
    samples = []
    sources: list[str] = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}: data row {number} (trace record {row.get('id')})"
        if None in row or any(v is None for v in row.values()):
            raise MeasurementError(f"{where}: the row does not have the header's {len(_trace_csv_columns())} fields")
        name = row["network"]
        if name not in networks:
            networks[name] = _named_network(name, where)
        network = networks[name]
        if network.hash != row["network_hash"]:
            raise MeasurementError(f"{where}: network {name!r} was recorded with hash {row['network_hash']}, but the "
                                   f"{name!r} known here has hash {network.hash}: calibrate from the trace database "
                                   "(.sqlite), which holds the network it measured")
        try:
            wbits, abits, batch = float(row["avg_weight_bits"]), float(row["avg_act_bits"]), int(row["batch"])
            latency, energy = float(row["latency_s"]), float(row["energy_j"])
        except ValueError as exc:
            raise MeasurementError(f"{where}: {exc}") from None
        plan = QuantPlan.uniform(network, int(wbits), int(abits)) if wbits.is_integer() and abits.is_integer() else None
        if plan is None or plan.hash != row["plan_hash"]:
            raise MeasurementError(f"{where}: plan {row['plan_hash']} is not uniform, and the CSV export holds only its "
                                   "hash: calibrate from the trace database (.sqlite), which holds every plan")
        if batch < 1 or not latency > 0 or not math.isfinite(latency):
            raise MeasurementError(f"{where}: batch must be >= 1 and latency_s a positive number")
        parts = tuple((spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers))
        samples.append(Sample(*parts[0], batch, latency, energy if energy > 0 else math.nan, name, parts[1:]))
        sources.append(row["source"])
    if not samples:
        raise MeasurementError(f"{path}: no measurements")
    return _labelled(Dataset(tuple(samples), f"trace export {Path(path).name}"), sources,
                     [s in MEASURED_SOURCES for s in sources])


def _named_network(name: str, where: str) -> NetworkSpec:
    from autoq.host.models.resolve import spec_for

    try:
        return spec_for(name)
    except AutoQError as exc:
        raise MeasurementError(f"{where}: cannot resolve network {name!r} by name ({exc}): calibrate from the trace "
                               "database (.sqlite), which holds the network it measured") from None


def write_measurements_csv(samples: Iterable[Sample], path: str | Path, network: str = "net") -> None:
    """Write per-layer samples in the CSV format above (crash-safe); ``network`` fills the column for samples' keys."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    for s in samples:
        if s.more:
            raise MeasurementError(f"sample {s.key!r} measures {len(s.parts)} layers together; the CSV holds one layer a row")
        layer = s.layer
        bits = str(s.weight_bits[0]) if len(set(s.weight_bits)) == 1 else ";".join(map(str, s.weight_bits))
        writer.writerow([
            s.key.split("/", 1)[0] if "/" in s.key else network, layer.name, layer.c_in, layer.c_out,
            f"{layer.kernel[0]}x{layer.kernel[1]}", f"{layer.stride[0]}x{layer.stride[1]}", layer.groups,
            *layer.in_hw, *layer.out_hw, s.batch, bits, s.act_bits, repr(s.latency_s), layer.kind,
            "" if math.isnan(s.energy_j) else repr(s.energy_j),
        ])
    atomic_write_text(path, out.getvalue())


def samples_from_trace(path: str | Path) -> Dataset:
    """Per-layer latencies (and energies) of every measurement in a trace database."""
    from autoq.host.traces import TraceError, TraceStore

    try:
        store = TraceStore(path, mode="r")
    except TraceError as exc:
        raise MeasurementError(str(exc)) from None
    samples = []
    sources: list[str] = []
    measured: list[bool] = []
    with store:
        for record in store:
            m = record.measurement
            costs = {c.name: c for c in m.layers}
            latency_measured = m.is_measured("layers.latency_s")
            energy_measured = m.is_measured("layers.energy_j")
            for spec, lp in zip(record.network.layers, record.plan.layers):
                cost = costs.get(spec.name)
                if cost is None or not cost.latency_s > 0:
                    continue
                samples.append(Sample(spec, lp.weight_bits, lp.act_bits, record.batch, cost.latency_s,
                                      cost.energy_j if energy_measured and cost.energy_j > 0 else math.nan,
                                      f"{record.network.name}/{spec.name}"))
                sources.append(m.provenance.source if latency_measured else
                               f"{m.provenance.source} (predicted by {m.predicted.get('layers.latency_s')!r})")
                measured.append(latency_measured)
    if not samples:
        raise MeasurementError(f"trace {path} holds no per-layer measurements")
    return _labelled(Dataset(tuple(samples), f"trace {Path(path).name}"), sources, measured)


MEASURED_SOURCES = ("board", "rtlsim")
"""Sources whose latencies are measurements (``autoq.common.measurement``: the others' are a model's)."""


def _labelled(dataset: Dataset, sources: Sequence[str], measured: Sequence[bool]) -> Dataset:
    """``dataset`` with ``predicted``/``measured_by`` set from each sample's source and whether it was measured."""
    predicted: dict[str, int] = {}
    for source, was_measured in zip(sources, measured):
        if not was_measured:
            predicted[source] = predicted.get(source, 0) + 1
    reason = ""
    if predicted:
        reason = (f"{sum(predicted.values())} of {len(sources)} latencies were predicted by a model, not measured ("
                  + ", ".join(f"{n} from {s}" for s, n in predicted.items()) + ")")
    by = tuple(dict.fromkeys(s for s, m in zip(sources, measured) if m))
    return dataset._replace(predicted=reason, measured_by=by)


def load_samples(path: str | Path) -> Dataset:
    """Read one measurement input, choosing the reader by file type."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_measurements_csv(path)
    if suffix in TRACE_SUFFIXES:
        return samples_from_trace(path)
    if suffix == ".npy":
        raise MeasurementError(f"{path}: a lookup table needs its network: use --lookup-table FILE.npy --arch NAME --batch N")
    raise MeasurementError(f"{path}: unknown measurement file type {suffix!r}; expected .csv or a trace ({', '.join(TRACE_SUFFIXES)})")


def merge(datasets: Sequence[Dataset]) -> Dataset:
    if not datasets:
        raise MeasurementError("no measurement inputs given")
    return Dataset(tuple(s for d in datasets for s in d.samples), " + ".join(d.source for d in datasets),
                   "; ".join(d.predicted for d in datasets if d.predicted),
                   tuple(dict.fromkeys(k for d in datasets for k in d.measured_by)))


class BundledTable(NamedTuple):
    """A lookup table shipped in ``autoq.calibration`` (``data/``), with the network and batch it was measured at."""

    file: str
    arch: str
    batch: int
    about: str


BUNDLED_TABLES = {
    "haq-mobilenet-v2": BundledTable("data/haq/qmobilenetv2_imagenet100_batch16_latency_table.npy", "mobilenet_v2", 16,
                                     "HAQ's MobileNetV2 latency table (MIT HAN Lab, MIT License; data/haq/README.md)"),
}


def lookup_table_path(name_or_path: str | Path) -> Path:
    """The file of a bundled table name (``BUNDLED_TABLES``), or ``name_or_path`` itself as a path."""
    table = BUNDLED_TABLES.get(str(name_or_path))
    if table is None:
        return Path(name_or_path)
    return Path(str(resources.files("autoq.calibration").joinpath(table.file)))


def samples_from_lookup_table(path: str | Path, layers: Sequence[LayerSpec], batch: int, clock_hz: float,
                              network: str) -> Dataset:
    """A HAQ-style table ``[layer, wbits - 1, abits - 1]`` of cycles at ``batch``, as samples in seconds at ``clock_hz``."""
    try:
        table = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MeasurementError(f"lookup table {path} not found; bundled tables: {', '.join(BUNDLED_TABLES)}") from None
    except (OSError, ValueError) as exc:
        raise MeasurementError(f"cannot read lookup table {path}: {exc}") from None
    if table.ndim != 3 or table.shape[0] != len(layers) or table.shape[1] < 1 or table.shape[2] < 1:
        raise MeasurementError(
            f"lookup table {path} has shape {table.shape}, but {network!r} needs ({len(layers)}, WBITS, ABITS): "
            f"one [wbits-1, abits-1] grid per conv/linear layer"
        )
    if not np.issubdtype(table.dtype, np.number) or not np.all(np.isfinite(table)) or table.min() <= 0:
        raise MeasurementError(f"lookup table {path} must hold positive finite numbers")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MeasurementError(f"batch must be a positive int, got {batch!r}")
    samples = tuple(
        Sample(layer, (w + 1,) * layer.c_out, a + 1, batch, float(table[i, w, a]) / clock_hz, math.nan, f"{network}/{layer.name}")
        for i, layer in enumerate(layers) for w in range(table.shape[1]) for a in range(table.shape[2])
    )
    return Dataset(samples, f"lookup table {Path(path).name} ({network}, batch {batch})", measured_by=("lookup table",))
