"""Looking inside the CNN: what each layer computes, from the formulas and from a real forward pass.

`summary(cfg)` is the tutorial's layer-by-layer arithmetic done for any ModelConfig, on a 28x28 input:

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

`activations(model, x)` runs the model's own forward pass with a trace (Net.forward(x, trace)) and keeps every
intermediate tensor, the raw material of the `explain` figure and of the web page's layer view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mnist_cnn.config import conv_layers, conv_out
from mnist_cnn.data import save_output
from mnist_cnn.model import ModelConfig, Net

# -----------------------------------------------------------------------------
# activations: one forward pass, every intermediate kept


def activations(model: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x: normalized (B, 1, 28, 28) -> {name: tensor} in forward order (input .. logits, probs), on x's device.

    The model is put in eval mode (dropout off) and nothing is tracked for autograd. conv1 and conv2 are shown
    after their ReLU (Net pools first and applies ReLU after; the two orders give the same pool1 and pool2).
    """
    if x.dim() == 3:  # (1, 28, 28): one image, as preprocess() returns it
        x = x.unsqueeze(0)
    model.eval()
    device = next(model.parameters()).device
    trace = {}
    with torch.inference_mode():
        x = x.to(device, torch.float32)
        logits = model(x, trace)  # trace: conv1, pool1, conv2, pool2, fc1, logits
        return {"input": x,  # (B, 1, 28, 28)
                "conv1": F.relu(trace["conv1"]),  # (B, C1, 26, 26)
                "pool1": trace["pool1"],  # (B, C1, 13, 13)
                "conv2": F.relu(trace["conv2"]),  # (B, C2, 11, 11)
                "pool2": trace["pool2"],  # (B, C2, 5, 5)
                "fc1": trace["fc1"],  # (B, 128)
                "logits": logits,  # (B, 10)
                "probs": F.softmax(logits, dim=1)}  # (B, 10), rows sum to 1


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
    side = cfg.image_size
    layers = [{"name": "input", "type": "image", "output_shape": [1, side, side], "formula": "",
               "params": 0, "macs": 0, "receptive_field": 1}]
    rf, jump = 1, 1  # receptive field and distance in input pixels between neighbouring outputs
    for layer in conv_layers(cfg):  # conv1, pool1, conv2, pool2
        k, c_in, c_out, side = layer.kernel, layer.c_in, layer.c_out, layer.side_out
        rf, jump = rf + (k - 1) * jump, jump * layer.stride
        params = 0 if layer.pool else c_out * c_in * k * k + c_out + 2 * c_out * cfg.batch_norm  # BN: weight, bias
        extra = (f", padding={layer.padding}" if layer.padding else "") + (") + BatchNorm" if cfg.batch_norm else ")")
        kind = f"MaxPool2d({k}, {layer.stride})" if layer.pool else f"Conv2d({c_in}, {c_out}, {k}{extra} + ReLU"
        layers.append({"name": layer.name, "type": kind, "output_shape": [c_out, side, side],
                       "formula": _size_formula(layer.side_in, k, layer.stride, layer.padding, layer.pool),
                       "params": params,
                       "macs": 0 if layer.pool else c_out * side * side * c_in * k * k, "receptive_field": rf})
    c2 = cfg.channels[1]
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
        "flatten_dummy": Net(cfg).flat_features,  # the tutorial's dummy-tensor trick, run for real
        "unseen_border": cfg.image_size - seen,  # input rows/columns (bottom, right) no unit ever sees
    }


def format_summary(s: dict) -> str:
    """The summary as an aligned text table, for `mnist-cnn summary`."""
    rows = [("layer", "type", "output", "formula", "params", "MACs", "RF")]
    for layer in s["layers"]:
        shape = "x".join(map(str, layer["output_shape"]))
        rows.append((layer["name"], layer["type"], shape, layer["formula"], f"{layer['params']:,}",
                     f"{layer['macs']:,}", str(layer["receptive_field"])))
    rows.append(("total", "", "", "", f"{s['params']:,}", f"{s['macs']:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {4, 5, 6}  # numbers align right
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    size = s["config"]["image_size"]
    match = "agree" if s["flatten_dummy"] == s["flatten_formula"] else "DISAGREE"
    lines += ["",
              f"flatten size: formula {s['flatten_formula']:,}, dummy tensor through Net.features "
              f"{s['flatten_dummy']:,} ({match})",
              "output size: (W - K + 2P)/S + 1, floored; conv here has P = 0, S = 1; pooling has no parameters",
              f"MACs: multiply-accumulates for one {size}x{size} image; RF: receptive field in input pixels per side"]
    if s["unseen_border"]:
        lines.append(f"the flooring drops the last {s['unseen_border']} input row(s)/column(s): no unit sees them")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# saliency: which input pixels move the predicted class's score


def saliency(model: Net, x: torch.Tensor, target: int | None = None, steps: int = 32) -> dict:
    """Input gradient and Integrated Gradients of the target logit (default: the predicted class).

    x: normalized (1, 28, 28) or (1, 1, 28, 28). Integrated Gradients (Sundararajan et al. 2017) averages the
    gradient along the straight path from a baseline to x and multiplies by (x - baseline); the baseline is a
    blank canvas (pixel 0: -1 after the tutorial's normalization, -mean/std after a model's own). Its
    attributions sum to logit(x) - logit(blank) up to the Riemann-sum error, which `ig_check` reports. All 32
    path points go through the network as one batch.
    """
    x = x.reshape(1, 1, *x.shape[-2:]).detach().float()
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = model(xg)  # (1, 10)
        target = int(logits.argmax(1)) if target is None else int(target)
        (grad,) = torch.autograd.grad(logits[0, target], xg)  # (1, 1, 28, 28)
        baseline = torch.full_like(x, -model.cfg.mean / model.cfg.std)  # pixel 0, normalized as trained
        alphas = (torch.arange(steps, device=device, dtype=x.dtype) + 0.5) / steps  # midpoint rule
        path = (baseline + alphas.view(-1, 1, 1, 1) * (x - baseline)).requires_grad_(True)  # (steps, 1, 28, 28)
        path_logits = model(path)[:, target]
        (path_grad,) = torch.autograd.grad(path_logits.sum(), path)
    ig = ((x - baseline) * path_grad.mean(0, keepdim=True))[0, 0]  # (28, 28)
    with torch.no_grad():
        gap = (model(x)[0, target] - model(baseline)[0, target]).item()
    return {"target": target, "gradient": grad[0, 0].cpu(), "integrated_gradients": ig.cpu(),
            "ig_check": {"sum": ig.sum().item(), "logit_gap": gap}}


# -----------------------------------------------------------------------------
# figures (matplotlib's object API drawn by Agg: no display needed, pyplot's backend and figure list untouched)


def new_figure(**kw):
    """A matplotlib Figure (figsize=, layout=, ...) that savefig draws with Agg; nothing process-wide changes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def mosaic(maps: torch.Tensor, cols: int) -> torch.Tensor:
    """(C, H, W) -> one (rows*(H+1)-1, cols*(W+1)-1) image of the maps in a grid, NaN (drawn white) between."""
    c, h, w = maps.shape
    rows = -(-c // cols)
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for i in range(c):
        r, q = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = maps[i]
    return out


def _show_maps(ax, maps, title, cols, cmap="viridis", vmin=0.0, vmax=None, fig=None):
    import matplotlib as mpl

    cm = mpl.colormaps[cmap].with_extremes(bad="white")
    vmax = vmax if vmax is not None else max(float(maps.max()), 1e-6)
    im = ax.imshow(mosaic(maps.float().cpu(), cols), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if fig is not None:
        fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
    return im


def _top_row(top, acts: dict, sal: dict, pred: int, names: list[str], norm: tuple[float, float]):
    """figure_explain's first row: the input, its saliency and integrated gradients, the logits, the softmax."""
    probs, logits = acts["probs"], acts["logits"]
    ax = top.subplots(1, 5, width_ratios=[1, 1, 1, 1.5, 1.5])
    lo, hi = -norm[0] / norm[1], (1 - norm[0]) / norm[1]  # pixels 0 and 255, normalized as the model was trained
    ax[0].imshow(acts["input"][0], cmap="gray", vmin=lo, vmax=hi)
    ax[0].set_title(f"input as the network sees it\n28x28, normalized to [{lo:.3g}, {hi:.3g}]", fontsize=10)
    g = sal["gradient"].abs()
    ax[1].imshow(acts["input"][0], cmap="gray", vmin=lo, vmax=hi)
    ax[1].imshow(g, cmap="hot", alpha=0.75, vmin=0, vmax=float(g.max()) or 1)
    ax[1].set_title(f"saliency: |d logit[{pred}] / d pixel|\n(input gradient)", fontsize=10)
    ig = sal["integrated_gradients"]
    lim = float(ig.abs().max()) or 1.0
    ax[2].imshow(ig, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[2].set_title(f"integrated gradients for class {names[pred]}\nred: pushes towards it, blue: against", fontsize=10)
    for a in ax[:3]:
        a.set_xticks([])
        a.set_yticks([])
    classes = list(range(len(probs)))
    colors = ["tab:orange" if c == pred else "tab:blue" for c in classes]
    ax[3].bar(classes, logits, color=colors)
    ax[3].axhline(0, color="black", linewidth=0.6)
    ax[3].set_title("logits (fc2 output, raw scores)", fontsize=10)
    rotate = 0 if all(len(n) <= 2 for n in names) else 60  # digits stay upright; "Ankle boot" is turned
    ax[3].set_xticks(classes, names, rotation=rotate, fontsize=8 if rotate else None)
    ax[3].set_xlabel("digit" if not rotate else "class")
    ax[4].bar(classes, probs, color=colors)
    ax[4].set_ylim(0, 1.3)
    ax[4].set_xticks(classes, names, rotation=rotate, fontsize=8 if rotate else None)
    ax[4].set_xlabel("digit" if not rotate else "class")
    ax[4].set_ylabel("probability")
    ax[4].set_title("softmax(logits): sums to 1, argmax = prediction", fontsize=10)
    ax[4].annotate(f"predicted {names[pred]}\n{float(probs[pred]):.3f}", (pred, float(probs[pred])),
                   xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=9, weight="bold")


def figure_explain(model: Net, x: torch.Tensor, out: str, caption: str = "", label: int | None = None,
                   names: list[str] | None = None) -> dict:
    """One figure of everything the network computes for one image; saved to `out` (PNG). Returns the numbers.
    `names`: the class names (default: the class numbers, MNIST's digits)."""
    acts = {k: v[0].cpu() for k, v in activations(model, x).items()}
    probs, logits = acts["probs"], acts["logits"]
    pred = int(probs.argmax())
    sal = saliency(model, x, pred)
    c1, c2 = acts["conv1"].shape[0], acts["conv2"].shape[0]
    cols1 = 8 if c1 % 8 == 0 or c1 > 8 else c1
    cols2 = 8 if c2 <= 64 else 16

    fig = new_figure(figsize=(17, 13.5), layout="constrained")
    names = [str(c) for c in range(len(probs))] if names is None else list(names)
    head = f"predicted {names[pred]} with probability {float(probs[pred]):.3f}"
    if label is not None:
        head += f"   (true label {names[label]}: {'correct' if label == pred else 'WRONG'})"
    fig.suptitle(f"Inside the CNN{': ' + caption if caption else ''}\n{head}", fontsize=14)
    top, mid, bot = fig.subfigures(3, 1, height_ratios=[1.0, 1.15, 1.55])

    _top_row(top, acts, sal, pred, names, (model.cfg.mean, model.cfg.std))

    shape = lambda t: "x".join(map(str, t.shape))  # noqa: E731
    ax = mid.subplots(1, 2)
    _show_maps(ax[0], acts["conv1"], f"conv1 + ReLU: all {c1} feature maps ({shape(acts['conv1'])})\n"
               "bright = the filter's pattern found there", cols1, fig=mid)
    _show_maps(ax[1], acts["pool1"], f"pool1 (max {model.cfg.pool_kernel}x{model.cfg.pool_kernel}, stride "
               f"{model.cfg.pool_stride}): {shape(acts['pool1'])}", cols1, fig=mid)

    ax = bot.subplots(1, 3, width_ratios=[1, 1, 0.55])
    _show_maps(ax[0], acts["conv2"], f"conv2 + ReLU: all {c2} feature maps ({shape(acts['conv2'])})", cols2, fig=bot)
    _show_maps(ax[1], acts["pool2"], f"pool2: {shape(acts['pool2'])} -> flattened to {acts['pool2'].numel()}",
               cols2, fig=bot)
    f1 = acts["fc1"]
    n = f1.numel()
    fc_cols = 8 if n % 8 == 0 else 1
    im = ax[2].imshow(f1.reshape(-1, fc_cols), cmap="viridis", vmin=0, interpolation="nearest")
    ax[2].set_title(f"fc1 + ReLU: {n} units (read row by row)\n{int((f1 > 0).sum())} of {n} active (> 0)",
                    fontsize=10)
    ax[2].set_xticks([])
    ax[2].set_yticks(range(0, n // fc_cols, 4), [str(fc_cols * r) for r in range(0, n // fc_cols, 4)])
    bot.colorbar(im, ax=ax[2], fraction=0.08, pad=0.03)
    save_output(out, fig, dpi=80)
    return {"prediction": pred, "class_name": names[pred], "probabilities": probs.tolist(), "logits": logits.tolist(),
            "label": label,
            "saliency_target": sal["target"], "ig_check": sal["ig_check"], "figure": str(out)}


def figure_filters(model: Net, out: str) -> None:
    """The learned kernels: conv1 (C1 filters of 1 channel) and conv2 (C2 filters x C1 input channels)."""
    w1 = model.conv1.weight.detach().cpu()[:, 0]  # (C1, K, K)
    w2 = model.conv2.weight.detach().cpu()  # (C2, C1, K, K)
    c2, c1, k, _ = w2.shape
    fig = new_figure(figsize=(16, 10), layout="constrained")
    fig.suptitle(f"Learned filters (the conv layers' learnable parameters), {k}x{k} kernels; "
                 "red positive, blue negative weights", fontsize=13)
    ax = fig.subplots(1, 2, width_ratios=[1, 1.3])
    lim1 = float(w1.abs().max())
    _show_maps(ax[0], w1, f"conv1: {w1.shape[0]} filters, each {k}x{k} over the 1 input channel",
               8, cmap="RdBu_r", vmin=-lim1, vmax=lim1, fig=fig)
    # conv2 as one grid: row = output filter, column = input channel
    big = mosaic(w2.reshape(c2 * c1, k, k), c1)
    lim2 = float(w2.abs().max())
    import matplotlib as mpl

    cm = mpl.colormaps["RdBu_r"].with_extremes(bad="white")
    im = ax[1].imshow(big, cmap=cm, vmin=-lim2, vmax=lim2, interpolation="nearest", aspect="auto")
    ax[1].set_title(f"conv2: {c2} filters (rows) x {c1} input channels (columns), each {k}x{k}", fontsize=10)
    ax[1].set_xlabel("input channel (a conv1 feature map)")
    ax[1].set_ylabel("conv2 filter")
    ax[1].set_xticks([(k + 1) * i + k / 2 for i in range(0, c1, 4)], range(0, c1, 4))
    ax[1].set_yticks([(k + 1) * i + k / 2 for i in range(0, c2, 8)], range(0, c2, 8))
    fig.colorbar(im, ax=ax[1], fraction=0.035, pad=0.02)
    save_output(out, fig, dpi=80)
