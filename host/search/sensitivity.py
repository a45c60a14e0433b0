"""Per-kernel sensitivity of a task's model: which kernels (output channels) and activations can lose bits.

A second-order (diagonal empirical Fisher) estimate on the calibration split, as in HAWQ and Fisher pruning: with
per-sample gradients ``g`` of the cross-entropy at the float model, ``F = E[g^2]`` per weight, and

* ``fisher[k] = sum_j F_j * w_j^2`` over kernel ``k``'s weights (how much the loss cares about the kernel at all);
* ``weight_loss[k, b-1] = 0.5 * sum_j F_j * (w_j - q_b(w_j))^2``: the estimated loss increase when kernel ``k`` is
  quantized to ``b`` bits with the quantizer's own MSE-optimal per-kernel clip;
* ``act_loss[i, a-1] = 0.5 * E[sum (dL/dx)^2 * (x - q_a(x))^2]`` over layer ``i``'s input, with the calibrated scales.

A plan's estimated loss is the sum of its kernels' and activations' entries (``plan_loss``). The estimate is made
once per task and cached in a ``.npz`` named by its key (network hash, weights, calibration inputs), so a resumed
search reuses it bit for bit. Models that cannot be differentiated (ONNX graphs) get ``from_scales``: each kernel's
largest weight squared times the quantization noise ``4**-b``, the proxy the greedy baseline used.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from autoq.common.fileio import atomic_write_bytes
from autoq.common.network import NetworkSpec
from autoq.common.plan import MAX_BITS, QuantPlan

from .rewards import SearchError

if TYPE_CHECKING:
    from autoq.host.evaluate import Evaluator
    from autoq.host.quant.quantizer import QuantizedModel
    from autoq.host.tasks.datasets import Split

#: Calibration images the Fisher estimate averages over (per-sample gradients: one backward pass each).
FISHER_SAMPLES = 256
SENSITIVITY_NAME = "sensitivity.npz"


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer sensitivity tables of one network (see the module docstring); ``source`` says how they were made."""

    layers: tuple[str, ...]
    fisher: tuple[np.ndarray, ...]  # (c_out,) per layer
    weight_loss: tuple[np.ndarray, ...]  # (c_out, MAX_BITS) per layer, column b - 1 for b bits
    act_loss: np.ndarray  # (layers, MAX_BITS)
    source: str
    key: str = ""

    def check(self, network: NetworkSpec) -> None:
        """Refuse tables made for another network (other layers or kernel counts)."""
        if self.layers != network.names:
            raise SearchError(f"sensitivity ({self.source}) is for layers {list(self.layers)[:4]}..., not network {network.name!r}")
        for layer, fisher, loss in zip(network, self.fisher, self.weight_loss):
            if fisher.shape != (layer.c_out,) or loss.shape != (layer.c_out, MAX_BITS):
                raise SearchError(f"sensitivity of layer {layer.name!r} has {fisher.shape[0]} kernels, the network {layer.c_out}")
        if self.act_loss.shape != (len(network), MAX_BITS):
            raise SearchError(f"sensitivity act_loss has shape {self.act_loss.shape}, expected {(len(network), MAX_BITS)}")

    def order(self, i: int) -> np.ndarray:
        """Layer ``i``'s kernels, most sensitive (largest ``fisher``) first; ties keep channel order."""
        return np.argsort(-self.fisher[i], kind="stable")

    def tiles(self, i: int, rows: int) -> list[np.ndarray]:
        """Layer ``i``'s kernels sorted by sensitivity and cut into tiles of ``rows`` (the last may be shorter)."""
        order = self.order(i)
        return [order[s : s + rows] for s in range(0, len(order), rows)]

    def kernel_loss(self, i: int, bits: Sequence[int] | np.ndarray) -> np.ndarray:
        """Estimated loss of each kernel of layer ``i`` at ``bits`` (one per kernel)."""
        bits = np.asarray(bits, np.int64)
        return self.weight_loss[i][np.arange(len(bits)), bits - 1]

    def plan_loss(self, plan: QuantPlan) -> float:
        """Estimated loss increase of ``plan``: its kernels' and activations' entries summed."""
        return float(sum(self.kernel_loss(i, lp.weight_bits).sum() + self.act_loss[i, lp.act_bits - 1]
                         for i, lp in enumerate(plan.layers)))

    # -- construction and cache -------------------------------------------------------------------------------------
    @classmethod
    def from_scales(cls, network: NetworkSpec, scales: Sequence[np.ndarray]) -> "Sensitivity":
        """The proxy without gradients: kernel ``k`` loses ``scale_k^2 * 4**-b`` (equal scales where none are given);
        a layer's activations lose as much as all its kernels at the same bits."""
        noise = 4.0 ** -np.arange(1, MAX_BITS + 1, dtype=np.float64)
        fisher, weight_loss, act_loss = [], [], []
        for layer, s in zip(network, scales):
            energy = np.asarray(s, np.float64) ** 2
            energy = energy if energy.sum() > 0 else np.ones(layer.c_out)
            fisher.append(energy)
            weight_loss.append(energy[:, None] * noise[None])
            act_loss.append(energy.sum() * noise)
        return cls(network.names, tuple(fisher), tuple(weight_loss), np.array(act_loss), "weight-scale")

    def save(self, path: str | Path) -> None:
        import io

        # Any: numpy types ``savez(file, *args, allow_pickle: bool, **kwds)``, so ``**`` of arrays would bind allow_pickle
        arrays: dict[str, Any] = {"act_loss": self.act_loss, "layers": np.array(self.layers),
                                  "source": np.array(self.source), "key": np.array(self.key)}
        for i, (f, w) in enumerate(zip(self.fisher, self.weight_loss)):
            arrays[f"fisher_{i}"], arrays[f"weight_loss_{i}"] = f, w
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Sensitivity":
        with np.load(Path(path), allow_pickle=False) as data:
            layers = tuple(str(n) for n in data["layers"])
            return cls(layers, tuple(data[f"fisher_{i}"] for i in range(len(layers))),
                       tuple(data[f"weight_loss_{i}"] for i in range(len(layers))), data["act_loss"],
                       str(data["source"]), str(data["key"]))


def _torch_qmodel(evaluator: "Evaluator") -> "QuantizedModel":
    """``evaluator``'s quantized torch model; an ONNX graph has no weights to differentiate (use ``from_scales``)."""
    from autoq.host.quant.quantizer import QuantizedModel

    qmodel = evaluator.qmodel
    if not isinstance(qmodel, QuantizedModel):
        raise SearchError(f"model {qmodel.network.name!r} is an ONNX graph: its Fisher sensitivity needs torch weights "
                          "(the weight-scale proxy, Sensitivity.from_scales, is what task_sensitivity uses for it)")
    return qmodel


def sensitivity_key(evaluator: "Evaluator", samples: int = FISHER_SAMPLES) -> str:
    """What the estimate depends on: network, quantized float weights, activation scales, calibration inputs."""
    digest = hashlib.sha256(evaluator.qmodel.network.hash.encode())
    qmodel = _torch_qmodel(evaluator)
    for name in qmodel.quantizers:
        digest.update(qmodel._float_weight(name).detach().numpy().tobytes())
        digest.update(qmodel.quantizers[name].act_scales.numpy().tobytes())
    if evaluator.calib is not None:
        digest.update(evaluator.calib.x[:samples].numpy().tobytes())
    digest.update(f"{samples}".encode())
    return digest.hexdigest()[:24]


def task_sensitivity(evaluator: "Evaluator", cache_dir: str | Path | None = None, samples: int = FISHER_SAMPLES) -> Sensitivity:
    """The Fisher sensitivity of ``evaluator``'s model on its calibration split, read from ``cache_dir`` when an
    estimate with the same key is there (written there otherwise); the scale proxy for a model without gradients."""
    network = evaluator.qmodel.network
    if not evaluator.trainable or evaluator.calib is None or len(evaluator.calib) == 0:
        scales = evaluator.kernel_scales()
        return Sensitivity.from_scales(network, [scales.get(l.name, np.zeros(l.c_out)) for l in network])
    key = sensitivity_key(evaluator, samples)
    path = None if cache_dir is None else Path(cache_dir) / SENSITIVITY_NAME
    if path is not None and path.is_file():
        try:
            cached = Sensitivity.load(path)
        except (OSError, ValueError, KeyError):
            cached = None
        if cached is not None and cached.key == key:
            cached.check(network)
            return cached
    result = fisher_sensitivity(evaluator, samples, key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        result.save(path)
    return result


def fisher_sensitivity(evaluator: "Evaluator", samples: int = FISHER_SAMPLES, key: str = "") -> Sensitivity:
    """The diagonal empirical Fisher estimate (module docstring) on the first ``samples`` calibration images."""
    import torch
    import torch.nn.functional as F

    from autoq.host.quant.quantizer import integer_activation_values, integer_weight_values, mse_optimal_weight_scales

    qmodel = _torch_qmodel(evaluator)
    network = qmodel.network
    calib: Split = evaluator.calib  # type: ignore[assignment]
    model = qmodel.model
    names = [l.name for l in network if l.name in qmodel.quantizers]
    weights = {n: qmodel._float_weight(n) for n in names}
    grad_sq = {n: torch.zeros_like(w) for n, w in weights.items()}
    act_sum = {n: torch.zeros(MAX_BITS, dtype=torch.float64) for n in names}
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, args):
            x = args[0]
            if x.requires_grad:
                x.retain_grad()
            inputs[name] = x

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    count = min(samples, len(calib))
    training = model.training
    model.eval()
    try:
        with qmodel.float_mode():
            for index in range(count):
                x = calib.x[index : index + 1].clone().requires_grad_(True)
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), calib.y[index : index + 1])
                loss.backward()
                for n in names:
                    grad = weights[n].grad
                    if grad is None:
                        raise SearchError(f"layer {n!r} got no weight gradient: the model's forward pass does not use it")
                    grad_sq[n] += grad.detach() ** 2
                    x_in = inputs[n]
                    if x_in.grad is None:
                        continue
                    g2, value = x_in.grad.detach().double() ** 2, x_in.detach().double()
                    quantizer = qmodel.quantizers[n]
                    for bits in range(1, MAX_BITS + 1):
                        scale = float(quantizer.act_scales[bits - 1])
                        q = integer_activation_values(value, scale, bits, quantizer.act_signed) * scale
                        act_sum[n][bits - 1] += float((g2 * (value - q) ** 2).sum())
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(training)
    fisher, weight_loss, act_loss = [], [], []
    ratios = next(iter(qmodel.quantizers.values())).ratios
    for layer in network:
        if layer.name not in grad_sq:  # a float layer: quantizing it is not an option, so it costs nothing here
            fisher.append(np.zeros(layer.c_out))
            weight_loss.append(np.zeros((layer.c_out, MAX_BITS)))
            act_loss.append(np.zeros(MAX_BITS))
            continue
        rows = weights[layer.name].detach().flatten(1).double()
        f_rows = (grad_sq[layer.name] / count).flatten(1).double()
        fisher.append((f_rows * rows**2).sum(1).numpy())
        table = np.empty((layer.c_out, MAX_BITS))
        for bits in range(1, MAX_BITS + 1):
            b = torch.full((layer.c_out,), bits, dtype=torch.int64)
            w_scale = mse_optimal_weight_scales(rows.float(), b, ratios)
            q = (integer_weight_values(rows.float(), w_scale, b) * w_scale[:, None]).double()
            table[:, bits - 1] = (0.5 * f_rows * (rows - q) ** 2).sum(1).numpy()
        weight_loss.append(table)
        act_loss.append(0.5 * act_sum[layer.name].numpy() / count)
    return Sensitivity(network.names, tuple(fisher), tuple(weight_loss), np.array(act_loss), "fisher", key)


def scales_by_layer(network: NetworkSpec, scales: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(scales.get(l.name, np.zeros(l.c_out)), np.float64) for l in network]
