"""The tutorial's Q&A, run: every worked example as a live computation that prints its inputs, steps and result,
and asserts what the tutorial claims (or says where the tutorial is wrong).

Each topic is one function returning a dict:
    {"topic", "questions" (the tutorial's Q&A headings it answers), "inputs", "steps", "result", "checks", "notes"}
`mnist-cnn concepts` prints them all; `mnist-cnn concepts backprop` prints one; `--json` gives the dicts.
A failed assertion here would be a bug in this package or in PyTorch, never a user error.

What the checks found: the tutorial's softmax example is rounded wrongly (softmax([2.0, 1.0, 0.5]) is
[0.6285, 0.2312, 0.1402], not [0.65, 0.24, 0.11]); its pooling formula "Input Size / Stride" only works when the
division is exact (11 / 2 = 5.5, the real output is 5); its forward/backward example is exactly right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_cnn.config import CONCEPT_TOPICS
from mnist_cnn.errors import MnistCnnError


@dataclass
class Context:
    data_dir: str = "data"
    model: str = "mnist_cnn_model.pth"  # used by output_size if it exists; else an untrained Net


def fmt(v, digits: int = 4) -> str:
    """Numbers, lists and tensors as short text: 4 decimals, trailing zeros kept for alignment."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt(x, digits)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def close(a, b, tol=1e-6) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# -----------------------------------------------------------------------------
# fundamental concepts


def softmax(ctx: Context) -> dict:
    z = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    e = z.exp()
    p = e / e.sum()
    assert close(p, torch.softmax(z, 0), 1e-12)
    assert close(p.sum(), 1.0, 1e-12)
    assert close(p, [0.6285, 0.2312, 0.1402], 5e-5)
    seed = torch.tensor([0.65, 0.24, 0.11], dtype=torch.float64)
    assert not close(p, seed, 0.005)  # the tutorial's numbers are not a rounding of the true ones
    pred = int(p.argmax())
    assert pred == 0
    animals = torch.tensor([0.10, 0.75, 0.15])
    assert int(animals.argmax()) == 1
    from mnist_cnn.model import Net

    out = Net()(torch.zeros(1, 1, 28, 28))
    assert out.shape == (1, 10)  # 10 outputs <-> 10 classes (digits 0..9)
    return {
        "topic": "softmax",
        "questions": ["What is the Softmax function and why is it used?",
                      "How do we determine the predicted class from the Softmax output?",
                      "If the Softmax output has n elements, does that mean we are classifying n classes?"],
        "inputs": {"logits": z.tolist()},
        "steps": [f"exp(logits) = {fmt(e)}",
                  f"sum of exps = {e.sum().item():.4f}",
                  f"softmax = exp / sum = {fmt(p)}",
                  f"sum of softmax = {p.sum().item():.4f} (a probability distribution)",
                  f"argmax = {pred}: the first class is the prediction",
                  "the tutorial's [cat, dog, bird] = [0.10, 0.75, 0.15]: argmax = 1, 'dog'",
                  f"our Net's output for one image has shape {tuple(out.shape)}: 10 scores for 10 digit classes"],
        "result": {"softmax": [round(v, 4) for v in p.tolist()], "sum": p.sum().item(), "argmax": pred,
                   "n_outputs": out.shape[1]},
        "checks": ["softmax by hand == torch.softmax", "outputs sum to 1", "argmax is class 0",
                   "Net has 10 outputs for 10 classes"],
        "notes": [f"the tutorial says [0.65, 0.24, 0.11]; that is wrong: the true values are {fmt(p)} "
                  f"(max difference {(p - seed).abs().max().item():.3f}). Its point stands: the largest logit "
                  f"gets a share larger than its linear share ({(z[0] / z.sum()).item():.3f})."],
    }


def loss(ctx: Context) -> dict:
    z = torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.float64)
    steps, result = [], {}
    for target in (0, 2):
        p = torch.softmax(z, 1)[0, target]
        by_hand = -math.log(p.item())
        torch_ce = F.cross_entropy(z, torch.tensor([target])).item()
        assert abs(by_hand - torch_ce) < 1e-12
        steps.append(f"true class {target}: p = {p.item():.4f}, loss = -ln(p) = {by_hand:.4f}; "
                     f"F.cross_entropy = {torch_ce:.4f}")
        result[f"loss_if_true_{target}"] = round(by_hand, 4)
    return {
        "topic": "loss",
        "questions": ["What are loss functions?"],
        "inputs": {"logits": z[0].tolist(), "true classes tried": [0, 2]},
        "steps": steps + ["a confident right answer costs little, a wrong one costs a lot"],
        "result": result,
        "checks": ["-log(softmax[true]) == F.cross_entropy (which takes logits: softmax is inside the loss)"],
        "notes": ["this is why the tutorial's Net ends in fc2 with no softmax: CrossEntropyLoss applies it"],
    }


# -----------------------------------------------------------------------------
# data loading and preprocessing


def transforms(ctx: Context) -> dict:
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from mnist_cnn.data import load_mnist, normalize

    data = load_mnist(ctx.data_dir, quiet=True)
    digit = data.test_images[0]  # (28, 28) uint8, a 7
    arr = digit.numpy()
    img = Image.fromarray(arr)  # mode L: 8-bit grayscale
    t = T.ToTensor()(img)  # (1, 28, 28) float32 in [0, 1]
    n = T.Normalize((0.5,), (0.5,))(t)  # (1, 28, 28) float32 in [-1, 1]
    ours = normalize(digit.unsqueeze(0))[0]
    assert t.dtype == torch.float32 and t.shape == (1, 28, 28)
    assert close(t, torch.from_numpy(arr.astype(np.float32) / 255).unsqueeze(0), 1e-7)
    assert close(n, (t - 0.5) / 0.5, 1e-7) and close(n, ours, 1e-6)
    assert float(n.min()) == -1.0 and float(n.max()) == 1.0
    row, cols = 7, slice(6, 13)
    return {
        "topic": "transforms",
        "questions": ["What are PIL Image, NumPy ndarray, and PyTorch FloatTensor?",
                      "What are image transformations like ToTensor and Normalize?"],
        "inputs": {"image": f"MNIST test image 0 (label {int(data.test_labels[0])})",
                   f"row {row}, columns 6..12": arr[row, cols].tolist()},
        "steps": [f"PIL Image: mode {img.mode}, size {img.size}",
                  f"NumPy ndarray: dtype {arr.dtype}, shape {arr.shape}, range [{arr.min()}, {arr.max()}]",
                  f"ToTensor -> FloatTensor: dtype {t.dtype}, shape {tuple(t.shape)} (channel first), "
                  f"x / 255: {fmt(t[0, row, cols])}",
                  f"Normalize((0.5,), (0.5,)): (x - 0.5) / 0.5: {fmt(n[0, row, cols])}",
                  f"whole image: [{arr.min()}, {arr.max()}] -> [{float(t.min()):.1f}, {float(t.max()):.1f}] "
                  f"-> [{float(n.min()):.1f}, {float(n.max()):.1f}]; background 0 -> -1.0"],
        "result": {"pixels": arr[row, cols].tolist(), "to_tensor": [round(v, 4) for v in t[0, row, cols].tolist()],
                   "normalized": [round(v, 4) for v in n[0, row, cols].tolist()]},
        "checks": ["ToTensor == pixel / 255", "Normalize == (x - 0.5) / 0.5",
                   "torchvision's pipeline == mnist_cnn.data.normalize (what training uses)"],
        "notes": [],
    }


def tensors(ctx: Context) -> dict:
    import numpy as np

    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    shared = torch.from_numpy(a)  # same memory
    a[0] = 10.0
    assert shared[0].item() == 10.0
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x ** 2).sum()
    y.backward()
    assert close(x.grad, [2.0, 4.0, 6.0])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "topic": "tensors",
        "questions": ["What is the difference between a PyTorch Tensor and a NumPy array behind the hood?"],
        "inputs": {"x": [1.0, 2.0, 3.0]},
        "steps": ["torch.from_numpy(a) shares memory: after a[0] = 10, the tensor reads "
                  f"{shared[0].item():g}",
                  f"y = sum(x^2) records its graph: y.grad_fn = {type(y.grad_fn).__name__}",
                  f"y.backward() fills x.grad = dy/dx = 2x = {fmt(x.grad, 1)} (automatic differentiation)",
                  f"devices a tensor can move to here with .to(...): {devices}"],
        "result": {"grad": x.grad.tolist()},
        "checks": ["from_numpy shares memory", "autograd gives 2x"],
        "notes": [],
    }


def batches(ctx: Context) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    n, bs = 60_000, 64
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=bs, shuffle=True)
    epoch = [b[0] for b in loader]  # one pass
    sizes, first, seen = [b.numel() for b in epoch], epoch[0], torch.cat(epoch)
    assert len(sizes) == math.ceil(n / bs) == 938 and sizes[-1] == n - 937 * bs == 32
    assert torch.equal(seen.sort().values, torch.arange(n))  # one epoch = every example exactly once
    return {
        "topic": "batches",
        "questions": ["What are Dataset and DataLoader?", "What are batches and why are they used?"],
        "inputs": {"training examples": n, "batch_size": bs},
        "steps": [f"DataLoader(dataset, batch_size={bs}, shuffle=True) yields ceil({n} / {bs}) = {len(sizes)} "
                  f"batches per epoch",
                  f"the first {len(sizes) - 1} hold {bs} examples, the last {sizes[-1]} ({n} - 937 * {bs})",
                  f"first batch starts with indices {first[:6].tolist()} (shuffled)",
                  "one epoch visits every example exactly once; each batch is one optimizer step"],
        "result": {"batches_per_epoch": len(sizes), "last_batch": sizes[-1]},
        "checks": ["938 batches, the last of 32", "an epoch covers all 60,000 indices once"],
        "notes": [],
    }


# -----------------------------------------------------------------------------
# the convolutional network


def conv(ctx: Context) -> dict:
    img = torch.tensor([[0, 0, 0, 0, 0],
                        [0, 1, 1, 1, 0],
                        [0, 0, 0, 1, 0],
                        [0, 0, 1, 0, 0],
                        [0, 1, 0, 0, 0]], dtype=torch.float64)  # a tiny 7
    k = torch.tensor([[-1, -1, -1],
                      [2, 2, 2],
                      [-1, -1, -1]], dtype=torch.float64)  # a horizontal-line detector
    out = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            out[i, j] = (img[i:i + 3, j:j + 3] * k).sum()
    layer = nn.Conv2d(1, 1, 3, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(k.view(1, 1, 3, 3))
    torch_out = layer(img.view(1, 1, 5, 5))[0, 0]
    assert close(out, torch_out, 1e-12)
    seed_conv1 = nn.Conv2d(1, 32, 3)
    n_params = sum(p.numel() for p in seed_conv1.parameters())
    assert n_params == 320 and all(p.requires_grad for p in seed_conv1.parameters())
    window = img[0:3, 0:3]
    return {
        "topic": "conv",
        "questions": ["How does a small 3x3 kernel work on a large 28x28 image?",
                      "What is a feature map and what do the numbers inside it represent?",
                      "Do we define the filters in a convolutional layer?"],
        "inputs": {"image 5x5": img.int().tolist(), "kernel 3x3": k.int().tolist()},
        "steps": [f"position (0, 0): window {window.int().tolist()} * kernel, summed = {out[0, 0].item():g}",
                  "slide one pixel right/down at a time: (5 - 3) + 1 = 3 positions per side",
                  f"feature map by hand: {out.int().tolist()}",
                  f"nn.Conv2d(1, 1, 3) with this kernel as its weight: {torch_out.int().tolist()}",
                  f"highest value {out.max().item():g} at {tuple(divmod(int(out.argmax()), 3))}: where the image "
                  "has a horizontal stroke (the 7's top bar)",
                  f"the tutorial's conv1 = nn.Conv2d(1, 32, 3) has {n_params} learnable numbers (32*1*3*3 weights + "
                  "32 biases), all requires_grad=True: training sets them, we only choose size and count"],
        "result": {"feature_map": out.tolist()},
        "checks": ["sliding by hand == nn.Conv2d", "conv1 has 320 learnable parameters"],
        "notes": [],
    }


def pool(ctx: Context) -> dict:
    fm = torch.tensor([[1, 3, 2, 0, 5],
                       [4, 2, 1, 1, 0],
                       [0, 1, 6, 2, 1],
                       [2, 0, 3, 7, 2],
                       [9, 1, 0, 4, 8]], dtype=torch.float64)
    side = (5 - 2) // 2 + 1
    out = torch.zeros(side, side, dtype=torch.float64)
    for i in range(side):
        for j in range(side):
            out[i, j] = fm[2 * i:2 * i + 2, 2 * j:2 * j + 2].max()
    mp = nn.MaxPool2d(2, 2)
    torch_out = mp(fm.view(1, 1, 5, 5))[0, 0]
    assert close(out, torch_out, 0) and out.shape == (2, 2)
    assert sum(p.numel() for p in mp.parameters()) == 0
    return {
        "topic": "pool",
        "questions": ["What is the difference between Conv2d and MaxPool2d?",
                      "What are Convolutional, Pooling, and Linear layers?"],
        "inputs": {"feature map 5x5": fm.int().tolist(), "pool": "kernel 2, stride 2"},
        "steps": [f"window rows 0-1, cols 0-1: {fm[0:2, 0:2].int().tolist()} -> max {out[0, 0].item():g}",
                  f"output side floor((5 - 2) / 2) + 1 = {side}: the last row and column (9, 1, 0, 4, 8 / "
                  "5, 0, 1, 2, 8) are never in a window",
                  f"by hand: {out.int().tolist()}",
                  f"nn.MaxPool2d(2, 2): {torch_out.int().tolist()}",
                  "nn.MaxPool2d has 0 parameters: nothing to learn, it only summarizes"],
        "result": {"pooled": out.tolist(), "params": 0},
        "checks": ["max pooling by hand == nn.MaxPool2d", "MaxPool2d has no parameters"],
        "notes": ["the 9 and the 8 in the dropped row/column are lost: that is the floor in the size formula"],
    }


def output_size(ctx: Context) -> dict:
    from mnist_cnn import checkpoint
    from mnist_cnn.insight.explain import activations, summary
    from mnist_cnn.model import Net

    if Path(ctx.model).is_file():
        model, _ = checkpoint.load(ctx.model)
        which = f"the trained model {ctx.model}"
    else:
        model = Net().eval()
        which = f"an untrained Net() ({ctx.model} not found; shapes do not depend on the weights)"
    s = summary(model.cfg)
    acts = activations(model, torch.zeros(1, 1, 28, 28))
    steps, table = [], []
    for layer in s["layers"]:
        name = layer["name"]
        if name not in acts:
            continue
        real = list(acts[name].shape[1:])
        assert real == layer["output_shape"], (name, real, layer["output_shape"])
        formula = layer["formula"] if layer["type"].startswith(("Conv", "Max")) else layer["type"]
        steps.append(f"{name:6} {formula or 'input'}  ->  real tensor {tuple(acts[name].shape)}")
        table.append({"layer": name, "formula": layer["output_shape"], "real": real})
    flat = s["flatten_formula"]
    assert flat == s["flatten_dummy"] == model.flat_features
    seed_pool = 11 / 2
    return {
        "topic": "output_size",
        "questions": ["How do we calculate the output size of a convolutional or pooling layer?",
                      "Does the coder have to manually calculate the input size to the first linear layer?"],
        "inputs": {"model": which, "input": [1, 1, 28, 28]},
        "steps": steps + [f"flatten: {s['layers'][5]['formula']}; the dummy-tensor trick (Net.flat_features) "
                          f"gives {s['flatten_dummy']}"],
        "result": {"shapes": table, "flatten": flat},
        "checks": ["every formula shape == the real tensor shape", "formula flatten == dummy-tensor flatten"],
        "notes": [f"the tutorial's pooling rule 'Input Size / Stride' gives 26 / 2 = 13 (right) but 11 / 2 = "
                  f"{seed_pool} for pool2: the real rule is floor((11 - 2) / 2) + 1 = 5"],
    }


# -----------------------------------------------------------------------------
# the training process


def backprop(ctx: Context) -> dict:
    X, W, b, Y, lr = [1.0, 2.0], [0.1, 0.5], 0.2, 0.8, 0.01
    # by hand, the chain rule
    Z = W[0] * X[0] + W[1] * X[1] + b
    A = max(0.0, Z)
    L = (Y - A) ** 2
    dL_dA = -2 * (Y - A)
    dA_dZ = 1.0 if Z > 0 else 0.0
    dL_dZ = dL_dA * dA_dZ
    dL_dw = [dL_dZ * X[0], dL_dZ * X[1]]
    dL_db = dL_dZ * 1.0
    new_w = [W[0] - lr * dL_dw[0], W[1] - lr * dL_dw[1]]
    new_b = b - lr * dL_db
    # the same with autograd and torch.optim.SGD
    x = torch.tensor(X, dtype=torch.float64)
    w = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    bb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    z = w @ x + bb
    a = torch.relu(z)
    loss_t = (Y - a) ** 2
    opt = torch.optim.SGD([w, bb], lr=lr)
    opt.zero_grad()
    loss_t.backward()
    auto = {"Z": z.item(), "A": a.item(), "loss": loss_t.item(), "dL/dw": w.grad.tolist(), "dL/db": bb.grad.item()}
    opt.step()
    auto.update({"new w": w.detach().tolist(), "new b": bb.item()})
    hand = {"Z": Z, "A": A, "loss": L, "dL/dw": dL_dw, "dL/db": dL_db, "new w": new_w, "new b": new_b}
    seed = {"Z": 1.3, "A": 1.3, "loss": 0.25, "dL/dw": [1.0, 2.0], "dL/db": 1.0, "new w": [0.09, 0.48],
            "new b": 0.19}
    for key in seed:
        assert close(hand[key], auto[key], 1e-12), key
        assert close(auto[key], seed[key], 1e-12), key
    return {
        "topic": "backprop",
        "questions": ["Can you illustrate Forward and Backward Propagation with a numerical example?",
                      "What are optimization algorithms and why are they needed?"],
        "inputs": {"X": X, "W": W, "b": b, "Y": Y, "learning rate": lr, "activation": "ReLU",
                   "loss": "squared error (Y - A)^2"},
        "steps": [f"forward: Z = w1*x1 + w2*x2 + b = 0.1*1.0 + 0.5*2.0 + 0.2 = {Z:.4f}",
                  f"forward: A = max(0, Z) = {A:.4f}",
                  f"loss = (Y - A)^2 = (0.8 - {A:.1f})^2 = {L:.4f}",
                  f"dL/dA = -2(Y - A) = {dL_dA:.4f}",
                  f"dA/dZ = 1 (Z > 0) -> dL/dZ = {dL_dZ:.4f}",
                  f"dL/dw1 = dL/dZ * x1 = {dL_dw[0]:.4f}; dL/dw2 = dL/dZ * x2 = {dL_dw[1]:.4f}; "
                  f"dL/db = dL/dZ * 1 = {dL_db:.4f}",
                  f"update: w1 = 0.1 - 0.01*{dL_dw[0]:.1f} = {new_w[0]:.4f}, w2 = 0.5 - 0.01*{dL_dw[1]:.1f} = "
                  f"{new_w[1]:.4f}, b = 0.2 - 0.01*{dL_db:.1f} = {new_b:.4f}",
                  "autograd: loss.backward() -> w.grad = {}, b.grad = {:.4f}; SGD(lr=0.01).step() -> w = {}, b = "
                  "{:.4f}".format(fmt(auto["dL/dw"]), auto["dL/db"], fmt(auto["new w"]), auto["new b"])],
        "result": {"by_hand": hand, "autograd": auto},
        "checks": ["every number by hand == autograd + torch.optim.SGD (to 1e-12)",
                   "both == the tutorial's numbers (Z 1.3, loss 0.25, grads 1.0/2.0/1.0, w 0.09/0.48, b 0.19)"],
        "notes": ["the tutorial's example is right in every digit"],
    }


def zero_grad(ctx: Context) -> dict:
    torch.manual_seed(0)
    layer = nn.Linear(2, 1).double()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)

    def backward():
        layer(x).pow(2).sum().backward()

    backward()
    g1 = layer.weight.grad.clone()
    backward()  # no zero_grad: added on top
    g2 = layer.weight.grad.clone()
    assert close(g2, 2 * g1, 1e-12)
    w_before = layer.weight.detach().clone()
    opt.zero_grad()
    assert layer.weight.grad is None or close(layer.weight.grad, 0 * g1, 0)
    assert torch.equal(layer.weight.detach(), w_before)  # weights untouched
    backward()
    g3 = layer.weight.grad.clone()
    assert close(g3, g1, 1e-12)
    return {
        "topic": "zero_grad",
        "questions": ["What is the purpose of optimizer.zero_grad()?"],
        "inputs": {"layer": "nn.Linear(2, 1)", "x": x[0].tolist(), "loss": "output^2"},
        "steps": [f"backward once: weight.grad = {fmt(g1[0])}",
                  f"backward again, no zero_grad: weight.grad = {fmt(g2[0])} (accumulated: twice the first)",
                  f"optimizer.zero_grad(): grad cleared (set to None); weight still {fmt(w_before[0])}",
                  f"backward again: weight.grad = {fmt(g3[0])} (equal to the first)"],
        "result": {"grad_once": g1[0].tolist(), "grad_twice_without_zero_grad": g2[0].tolist(),
                   "grad_after_zero_grad": g3[0].tolist()},
        "checks": ["two backward passes without zero_grad double the gradient",
                   "zero_grad does not change the weights", "after zero_grad one backward gives the single gradient"],
        "notes": [],
    }


def train_eval(ctx: Context) -> dict:
    torch.manual_seed(0)
    drop = nn.Dropout(p=0.5)
    x = torch.ones(1, 8)
    drop.train()
    t1, t2 = drop(x), drop(x)
    drop.eval()
    e1, e2 = drop(x), drop(x)
    assert not torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(e1, x)
    assert set(t1.unique().tolist()) <= {0.0, 2.0}
    return {
        "topic": "train_eval",
        "questions": ["What is the difference between model.train() and model.eval()?"],
        "inputs": {"layer": "nn.Dropout(p=0.5)", "x": x[0].tolist()},
        "steps": [f"train(): pass 1 {fmt(t1[0], 0)}", f"train(): pass 2 {fmt(t2[0], 0)}",
                  "  (about half the units zeroed, the rest scaled by 1/(1-p) = 2, differently each pass)",
                  f"eval(): pass 1 {fmt(e1[0], 0)}", f"eval(): pass 2 {fmt(e2[0], 0)}  (identity, deterministic)"],
        "result": {"train": [t1[0].tolist(), t2[0].tolist()], "eval": [e1[0].tolist(), e2[0].tolist()]},
        "checks": ["train-mode outputs differ between passes", "eval-mode output == input, every time"],
        "notes": ["the tutorial's network has no dropout or batch norm, so for it train() and eval() compute the same; "
                  "`mnist-cnn train --dropout 0.25` adds dropout, and then the mode matters"],
    }


TOPICS = {name: globals()[name] for name in CONCEPT_TOPICS}  # the functions above, in config's order


def run(topic: str | None = None, ctx: Context | None = None) -> list[dict]:
    ctx = ctx or Context()
    if topic is not None and topic not in TOPICS:
        raise MnistCnnError(f"unknown topic {topic!r}; choose from {', '.join(TOPICS)}")
    return [TOPICS[t](ctx) for t in ([topic] if topic else TOPICS)]


def format_concept(c: dict) -> str:
    lines = [f"== {c['topic']} ==", *(f"Q: {q}" for q in c["questions"]), "inputs:"]
    lines += [f"  {k} = {v}" for k, v in c["inputs"].items()]
    lines += ["steps:", *(f"  {s}" for s in c["steps"])]
    lines += ["result:", *(f"  {k} = {fmt(v)}" for k, v in c["result"].items())]
    lines += ["checked: " + "; ".join(c["checks"])]
    lines += [f"note: {n}" for n in c["notes"]]
    return "\n".join(lines)
