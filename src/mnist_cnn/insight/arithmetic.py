"""The arithmetic behind one unit of the network, with the model's own numbers: what CNN Explainer shows, for
the learner's own model and drawing.

    unit                     what made it
    conv1[c, y, x]           the 3x3 input patch at (y, x) (normalised units) * kernel c, summed, + bias, ReLU
    pool1[c, y, x]           the 2x2 window of conv1 map c at (2y, 2x) and which value won
    conv2[c, y, x]           the 32x3x3 patch of pool1 at (y, x) * kernel c: one 3x3 sum per input channel,
                             their total, + bias, ReLU
    pool2[c, y, x]           as pool1, on conv2
    fc1[j]                   the 1600 flattened pool2 values * row j of fc1's weights: the largest products,
                             the rest summed, + bias, ReLU
    fc2[j]                   the 128 fc1 values * row j of fc2's weights, + bias = logit z_j; then softmax:
                             e^z for each digit, their total, each probability

Every figure comes from one run of the model (`explain.activations`) and its parameters, in float32 as the
model computes them. The sum written out here (products + bias) is checked against the value the layer
itself produced (`"model"`): they agree to float32 rounding (~1e-6), which the learner can see.
"""

from __future__ import annotations

import math

import torch

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.insight.explain import activations
from mnist_cnn.model import Net

LAYERS = ("conv1", "pool1", "conv2", "pool2", "fc1", "fc2")
TOP_INPUTS = 12  # fc1/fc2: the inputs with the largest |input x weight| listed one by one; the rest as one sum


class UnitError(MnistCnnError):
    """A unit that does not exist in this network (layer, channel or position out of range)."""


def _check(name: str, value, limit: int, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnitError(f"{layer}: {name} must be an integer, got {value!r}")
    if not 0 <= value < limit:
        raise UnitError(f"{layer}: {name} must be in 0..{limit - 1}, got {value}")
    return value


def _map_unit(unit: dict, layer: str, shape) -> tuple[int, int, int]:
    """(channel, y, x) of a feature-map unit, each checked against the map's (C, H, W)."""
    c, h, w = shape
    return (_check("channel", unit.get("channel"), c, layer), _check("y", unit.get("y"), h, layer),
            _check("x", unit.get("x"), w, layer))


def _f(t: torch.Tensor):
    """A tensor as plain (nested) Python floats, for JSON."""
    return t.detach().double().tolist()


def conv_unit(model: Net, acts: dict, layer: str, unit: dict) -> dict:
    conv = getattr(model, layer)
    src = "input" if layer == "conv1" else "pool1"
    c, y, x = _map_unit(unit, layer, acts[layer].shape[1:])
    k = conv.kernel_size[0]
    patch = acts[src][0, :, y:y + k, x:x + k].float()  # (C_in, k, k): what the kernel covers, as the layer saw it
    kernel = conv.weight[c].detach().float()  # (C_in, k, k)
    products = patch * kernel  # (C_in, k, k)
    per_channel = products.sum(dim=(1, 2))  # (C_in,)
    bias = float(conv.bias.detach()[c])
    total = float(per_channel.sum()) + bias
    out = {"layer": layer, "channel": c, "y": y, "x": x, "input": src, "kernel_size": k,
           "patch": _f(patch), "kernel": _f(kernel), "products": _f(products), "channel_sums": _f(per_channel),
           "bias": bias, "sum": total, "relu": max(total, 0.0), "model": float(acts[layer][0, c, y, x])}
    if layer == "conv1":  # the same patch as the 0..255 pixels the user drew: normalised = (p/255 - 0.5) / 0.5
        out["patch_pixels"] = _f(torch.round((patch[0] * 0.5 + 0.5) * 255))
    else:  # 32 input channels: which of them pushed this unit most
        order = per_channel.abs().argsort(descending=True)[:8]
        out["top_channels"] = [{"channel": int(i), "sum": float(per_channel[i])} for i in order]
    return out


def pool_unit(model: Net, acts: dict, layer: str, unit: dict) -> dict:
    src = "conv1" if layer == "pool1" else "conv2"
    c, y, x = _map_unit(unit, layer, acts[layer].shape[1:])
    k, s = model.pool.kernel_size, model.pool.stride
    y0, x0 = y * s, x * s
    window = acts[src][0, c, y0:y0 + k, x0:x0 + k].float()  # (k, k), after ReLU, as the page shows conv maps
    flat = int(window.flatten().argmax())
    return {"layer": layer, "channel": c, "y": y, "x": x, "input": src, "window": _f(window),
            "window_origin": [y0, x0], "winner": [flat // window.shape[1], flat % window.shape[1]],
            "value": float(window.max()), "model": float(acts[layer][0, c, y, x]), "params": 0}


def linear_unit(model: Net, acts: dict, layer: str, unit: dict) -> dict:
    fc = getattr(model, layer)
    j = _check("index", unit.get("index", unit.get("channel")), fc.out_features, layer)
    inputs = torch.flatten(acts["pool2"], 1)[0] if layer == "fc1" else acts["fc1"][0]  # (1600,) or (128,)
    inputs, weights = inputs.float(), fc.weight[j].detach().float()
    products = inputs * weights
    top = products.abs().argsort(descending=True)[:TOP_INPUTS]
    c2, side = acts["pool2"].shape[1], acts["pool2"].shape[2]

    def name(i: int) -> str:  # where input i came from: pool2[c, y, x] for fc1, fc1[i] for fc2
        return f"pool2[{i // (side * side)}, {i // side % side}, {i % side}]" if layer == "fc1" else f"fc1[{i}]"

    bias = float(fc.bias.detach()[j])
    total = float(products.sum()) + bias
    out = {"layer": layer, "index": j, "inputs": int(inputs.numel()),
           "top": [{"input": int(i), "name": name(int(i)), "value": float(inputs[i]), "weight": float(weights[i]),
                    "product": float(products[i])} for i in top],
           "rest_sum": float(products.sum() - products[top].sum()), "rest_count": int(inputs.numel() - len(top)),
           "bias": bias, "sum": total}
    if layer == "fc1":
        out.update(relu=max(total, 0.0), model=float(acts["fc1"][0, j]), flatten=f"{c2} x {side} x {side}")
    else:
        out.update(model=float(acts["logits"][0, j]), softmax=softmax_table(acts["logits"][0]))
    return out


def softmax_table(logits: torch.Tensor) -> dict:
    """e^z for each logit, their total, each probability: softmax written out. Shifted by max(z) only when
    e^z would overflow a double (never for this network's usual logits)."""
    z = logits.double().tolist()
    shift = max(z) if max(z) > 700 else 0.0
    exps = [math.exp(v - shift) for v in z]
    total = sum(exps)
    return {"logits": z, "shift": shift, "exp": exps, "total": total, "probabilities": [e / total for e in exps]}


def explain_unit(model: Net, x: torch.Tensor, unit: dict) -> dict:
    """x: one normalised image (1, 28, 28) or (1, 1, 28, 28); unit: {"layer", "channel", "y", "x"} for maps or
    {"layer", "index"} for fc1/fc2 -> the unit's arithmetic as a JSON-ready dict. Raises UnitError."""
    layer = unit.get("layer") if isinstance(unit, dict) else None
    if layer not in LAYERS:
        raise UnitError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    acts = activations(model, x)  # one forward pass, every intermediate kept
    if layer in ("conv1", "conv2"):
        return conv_unit(model, acts, layer, unit)
    if layer in ("pool1", "pool2"):
        return pool_unit(model, acts, layer, unit)
    return linear_unit(model, acts, layer, unit)
