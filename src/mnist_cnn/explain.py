"""Looking inside the CNN: what each layer computes, from the formulas and from a real forward pass.

`summary(cfg)` is the seed's layer-by-layer arithmetic done for any ModelConfig, on a 28x28 input:

    layer   output      formula                                    params     MACs   RF
    input   1x28x28                                                     0        0    1
    conv1   32x26x26    (28 - 3 + 2*0)/1 + 1 = 26                     320  194,688    3
    pool1   32x13x13    floor((26 - 2 + 2*0)/2) + 1 = 13                0        0    4
    conv2   64x11x11    (13 - 3 + 2*0)/1 + 1 = 11                  18,496 2,230,272   8
    pool2   64x5x5      floor((11 - 2 + 2*0)/2) + 1 = 5 (5.5)           0        0   10
    flatten 1600        64 * 5 * 5 = 1600                               0        0   26
    fc1     128         1600 * 128 + 128                          204,928  204,800   26
    fc2     10          128 * 10 + 10                               1,290    1,280   26
                                                            total 225,034 2,631,040

MACs are multiply-accumulates for one image (a conv output element costs C_in*K*K of them; pooling and ReLU
only compare). RF is the receptive field: how many input pixels (per side) one output element can see. After
pool2 the floor drops the last conv2 row and column, so the fully connected layers see input rows 0..25 only:
the bottom two rows and right two columns of every digit are never looked at (MNIST keeps them blank anyway).

`activations(model, x)` runs the trained model's submodules one by one and keeps every intermediate tensor,
the raw material of the `explain` figure and of the web page's layer view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mnist_cnn.model import ModelConfig, Net, conv_out

# -----------------------------------------------------------------------------
# activations: one forward pass, every intermediate kept


def activations(model: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x: normalized (B, 1, 28, 28) -> {name: tensor} in forward order (input .. logits, probs), on x's device.

    The model is put in eval mode (dropout off) and nothing is tracked for autograd.
    """
    if x.dim() == 3:  # (1, 28, 28): one image, as preprocess() returns it
        x = x.unsqueeze(0)
    model.eval()
    device = next(model.parameters()).device
    out = {}
    with torch.inference_mode():
        x = x.to(device, torch.float32)
        out["input"] = x  # (B, 1, 28, 28)
        out["conv1"] = F.relu(model.conv1(x))  # (B, C1, 26, 26)
        out["pool1"] = model.pool(out["conv1"])  # (B, C1, 13, 13)
        out["conv2"] = F.relu(model.conv2(out["pool1"]))  # (B, C2, 11, 11)
        out["pool2"] = model.pool(out["conv2"])  # (B, C2, 5, 5)
        out["fc1"] = F.relu(model.fc1(torch.flatten(out["pool2"], 1)))  # (B, 128)
        out["logits"] = model.fc2(out["fc1"])  # (B, 10)
        out["probs"] = F.softmax(out["logits"], dim=1)  # (B, 10), rows sum to 1
    return out


# -----------------------------------------------------------------------------
# summary: shapes, formulas, parameters, MACs, receptive fields from the config alone


def _size_formula(w: int, k: int, s: int, p: int = 0, pool: bool = False) -> str:
    """The output-size formula with the numbers filled in; pooling shows the floor when it bites."""
    out = conv_out(w, k, s, p)
    exact = (w - k + 2 * p) / s + 1
    if not pool:
        return f"({w} - {k} + 2*{p})/{s} + 1 = {out}" + ("" if exact == out else f" (floor of {exact:g})")
    text = f"floor(({w} - {k} + 2*{p})/{s}) + 1 = {out}"
    return text + (f" (floor of {exact:g})" if exact != out else "")


def summary(cfg: ModelConfig = ModelConfig()) -> dict:
    """Per-layer output shape, formula, params, MACs and receptive field of Net(cfg) on one image; totals.

    ModelConfig itself refuses (ConfigError) a config whose feature map would shrink below 1x1, so any cfg
    that reaches here gives a valid network.
    """
    c1, c2 = cfg.channels
    k, pk, ps, side = cfg.kernel_size, cfg.pool_kernel, cfg.pool_stride, cfg.image_size
    layers = [{"name": "input", "type": "image", "output_shape": [1, side, side], "formula": "",
               "params": 0, "macs": 0, "receptive_field": 1}]
    rf, jump = 1, 1  # receptive field and distance in input pixels between neighbouring outputs

    def spatial(name, kind, c_in, c_out, kernel, stride, pool):
        nonlocal side, rf, jump
        new = conv_out(side, kernel, stride)
        rf, jump = rf + (kernel - 1) * jump, jump * stride
        params = 0 if pool else c_out * c_in * kernel * kernel + c_out
        macs = 0 if pool else c_out * new * new * c_in * kernel * kernel
        layers.append({"name": name, "type": kind, "output_shape": [c_out, new, new],
                       "formula": _size_formula(side, kernel, stride, 0, pool),
                       "params": params, "macs": macs, "receptive_field": rf})
        side = new

    spatial("conv1", f"Conv2d({1}, {c1}, {k}) + ReLU", 1, c1, k, 1, False)
    spatial("pool1", f"MaxPool2d({pk}, {ps})", c1, c1, pk, ps, True)
    spatial("conv2", f"Conv2d({c1}, {c2}, {k}) + ReLU", c1, c2, k, 1, False)
    spatial("pool2", f"MaxPool2d({pk}, {ps})", c2, c2, pk, ps, True)
    # the input pixels any fully connected unit can see: the span covered by the last feature map
    seen = min(cfg.image_size, (side - 1) * jump + rf)
    flat = c2 * side * side
    layers.append({"name": "flatten", "type": "Flatten", "output_shape": [flat],
                   "formula": f"{c2} * {side} * {side} = {flat}", "params": 0, "macs": 0, "receptive_field": seen})
    for name, n_in, n_out, after in (("fc1", flat, cfg.fc_units, " + ReLU"),
                                     ("fc2", cfg.fc_units, cfg.num_classes, " (logits)")):
        layers.append({"name": name, "type": f"Linear({n_in}, {n_out}){after}",
                       "output_shape": [n_out], "formula": f"{n_in} * {n_out} + {n_out} = {n_in * n_out + n_out:,}",
                       "params": n_in * n_out + n_out, "macs": n_in * n_out, "receptive_field": seen})
    return {
        "config": cfg.to_dict(),
        "layers": layers,
        "params": sum(layer["params"] for layer in layers),
        "macs": sum(layer["macs"] for layer in layers),
        "flatten_formula": flat,
        "flatten_dummy": Net(cfg).flat_features,  # the seed's dummy-tensor trick, run for real
        "unseen_border": cfg.image_size - seen,  # input rows/columns (bottom, right) no unit ever sees
    }
