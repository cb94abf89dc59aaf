"""The page's learning views: a unit's arithmetic, one training step on a private copy of the model, and the
output-size arithmetic of a network the learner configures.

    POST /api/explain        {"pixels": 28x28, "unit": {"layer", "channel", "y", "x"} | {"layer", "index"}}
                             -> the unit's arithmetic (insight/arithmetic.py); a unit that does not exist -> 422
    POST /api/teach          {"pixels", "label", "zero_grad", "train_mode", "lr"} -> one SGD step on this browser
                             session's own copy of the model: loss and probabilities before and after, the
                             gradient on the input (saliency) and on fc2's weights, one weight's update written out
    POST /api/teach/reset    forget this session's copy (the next step starts again from the served weights)
    GET  /api/shapes         ?kernel_size=&pool_kernel=&pool_stride=&c1=&c2=&fc_units= -> `mnist-cnn summary`'s
                             table for that network, or 422 saying why it cannot work

Explain and teach run in the server's worker threads (app.WorkPool: at most --decoders jobs at once, shared with
upload decoding), never in an unbounded pool, so a flood of them cannot take the CPU from /api/predict.

A teaching session is a cookie naming a private copy of the model, its optimizer and its accumulated gradients.
The served model is never trained. Sessions are bounded: at most MAX_SESSIONS at once (~4 MB each for the
tutorial's network: weights, gradients, momentum), each dropped after IDLE_SECONDS without a step; when all are
in use the least recently used copy is dropped to make room, so memory stays bounded and no request is refused.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time

import torch
import torch.nn.functional as F
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from mnist_cnn.config import conv_layers
from mnist_cnn.data import normalize
from mnist_cnn.errors import ConfigError
from mnist_cnn.insight.arithmetic import UnitError, explain_unit
from mnist_cnn.model import ModelConfig, Net

MAX_SHAPES_PARAMS = 20_000_000  # /api/shapes builds the network it describes: no bigger than this
MAX_SESSIONS = 16  # private model copies held at once
IDLE_SECONDS = 600.0  # a session unused this long is dropped
DEFAULT_LR = 0.01  # plain SGD, so "new w = old w - lr * grad" can be read off the answer
COOKIE = "mnist_cnn_teach"

router = APIRouter()


class Unit(BaseModel):
    layer: str = Field(description="conv1 | pool1 | conv2 | pool2 | fc1 | fc2")
    channel: int | None = Field(None, description="feature map (conv/pool); for fc1/fc2 the same as index")
    y: int | None = Field(None, description="row in the feature map")
    x: int | None = Field(None, description="column in the feature map")
    index: int | None = Field(None, description="fc1/fc2: which output unit")


class ExplainIn(BaseModel):
    pixels: list[list[float]] | list[float] = Field(description="the 28x28 image, as /api/predict takes it")
    unit: Unit


class TeachIn(BaseModel):
    pixels: list[list[float]] | list[float] = Field(description="the 28x28 image, as /api/predict takes it")
    label: int = Field(ge=0, le=9, description="what the drawing really is")
    zero_grad: bool = Field(True, description="clear the gradients before backward (off: they accumulate)")
    train_mode: bool = Field(True, description="model.train() for the step (off: model.eval())")
    lr: float = Field(DEFAULT_LR, gt=0, le=1, description="SGD learning rate")


# -----------------------------------------------------------------------------
# teaching sessions: private copies of the model, bounded in count and idle time


class Session:
    def __init__(self, model: Net):
        self.model = copy.deepcopy(model).float().cpu()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=DEFAULT_LR)
        self.lock = threading.Lock()
        self.used = time.monotonic()
        self.steps = 0
        self.since_zero_grad = 0  # backward passes whose gradients are summed in .grad right now


class Sessions:
    def __init__(self, limit: int = MAX_SESSIONS, idle: float = IDLE_SECONDS):
        self.limit, self.idle = limit, idle
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, sid: str | None, model: Net) -> tuple[str, Session]:
        """This browser's session, or a new one (the least recently used one dropped when all are in use)."""
        with self._lock:
            now = time.monotonic()
            for old in [k for k, s in self._by_id.items() if now - s.used > self.idle]:
                del self._by_id[old]
            if sid in self._by_id:
                self._by_id[sid].used = now
                return sid, self._by_id[sid]
            while self._by_id and len(self._by_id) >= self.limit:  # full: the least recently used copy makes room
                del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].used)]
            sid = secrets.token_urlsafe(16)
            self._by_id[sid] = Session(model)
            return sid, self._by_id[sid]

    def drop(self, sid: str | None) -> bool:
        with self._lock:
            return self._by_id.pop(sid, None) is not None

    def __len__(self):
        return len(self._by_id)


def forward_probs(model: Net, x: torch.Tensor) -> list[float]:
    """The 10 probabilities for one image (1, 1, 28, 28), eval mode, no gradient."""
    with torch.no_grad():
        return F.softmax(model.eval()(x), dim=1)[0].tolist()


def teach_step(s: Session, x: torch.Tensor, label: int, zero_grad: bool, train_mode: bool, lr: float) -> dict:
    """One optimizer step on the session's model for one image x (1, 1, 28, 28), written out for the page."""
    model, y = s.model, torch.tensor([label])
    with torch.no_grad():
        logits_eval = model.eval()(x)
        logits_train = model.train()(x)  # identical unless the network has dropout (train) or batch norm
    probs_before = F.softmax(logits_eval, dim=1)[0].tolist()
    model.train(train_mode)
    for g in s.opt.param_groups:
        g["lr"] = lr
    if zero_grad:
        s.opt.zero_grad(set_to_none=False)
        s.since_zero_grad = 0
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # adds this image's gradients to whatever .grad holds
    s.since_zero_grad += 1
    w = model.fc2.weight
    j = int(w.grad[label].abs().argmax())  # the fc2 weight into the true digit that moves most
    old = float(w.detach()[label, j])
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    s.opt.step()
    s.steps += 1
    with torch.no_grad():
        loss_after = float(F.cross_entropy(model.eval()(x), y))
    saliency = x.grad[0, 0].abs()  # (28, 28): how much each input pixel moves the loss
    return {
        "label": label, "steps": s.steps, "lr": lr, "zero_grad": zero_grad, "train_mode": train_mode,
        "loss_before": float(loss), "loss_after": loss_after,
        "probabilities_before": probs_before, "probabilities_after": forward_probs(model, x.detach()),
        "backwards_in_grad": s.since_zero_grad, "grad_norm": grad_norm,
        "train_eval_max_diff": float((logits_train - logits_eval).abs().max()),
        "saliency": (saliency / saliency.max().clamp_min(1e-12)).tolist(), "saliency_max": float(saliency.max()),
        "fc2_grad": w.grad.tolist(), "fc2_grad_norm_per_digit": w.grad.norm(dim=1).tolist(),
        "update": {"param": f"fc2.weight[{label}, {j}]", "old": old, "grad": float(w.grad[label, j]),
                   "lr": lr, "new": float(w.detach()[label, j])},
    }


# -----------------------------------------------------------------------------
# the routes


def _image(pixels, model: Net) -> torch.Tensor:
    from mnist_cnn.serve.app import image_from_pixels  # the one check of JSON pixels (422 on bad ones)

    # (1, 1, 28, 28), normalized as the model was trained (its cfg.mean/std)
    return normalize(torch.from_numpy(image_from_pixels(pixels))[None], model.cfg.mean, model.cfg.std)


@router.post("/api/explain", summary="the arithmetic behind one unit, with the model's own numbers",
             responses={422: {"description": "pixels or unit out of range"}})
async def explain(body: ExplainIn, request: Request):
    model = request.app.state.engine.model
    x = _image(body.pixels, model)
    try:  # in the server's worker threads, bounded with upload decoding (app.WorkPool)
        return await request.app.state.work_pool.run(request, explain_unit, model, x,
                                                   body.unit.model_dump(exclude_none=True))
    except UnitError as e:
        raise HTTPException(422, str(e)) from None


@router.post("/api/teach", summary="one training step on this browser session's private copy of the model")
async def teach(body: TeachIn, request: Request, response: Response):
    sessions: Sessions = request.app.state.teach
    model = request.app.state.engine.model
    x = _image(body.pixels, model)

    def step():  # a new session copies the model: that too in a worker thread
        sid, s = sessions.get(request.cookies.get(COOKIE), model)
        with s.lock:  # one step at a time per session; other sessions run in parallel
            return sid, teach_step(s, x, body.label, body.zero_grad, body.train_mode, body.lr)

    sid, out = await request.app.state.work_pool.run(request, step)  # bounded with upload decoding (app.WorkPool)
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", max_age=int(IDLE_SECONDS))
    return out


@router.post("/api/teach/reset", summary="forget this browser session's copy of the model")
async def teach_reset(request: Request, response: Response):
    dropped = request.app.state.teach.drop(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE)
    return {"reset": dropped}


@router.get("/api/shapes", summary="layer shapes and parameter counts of a network you configure")
async def shapes(kernel_size: int = Query(ModelConfig.kernel_size, ge=1, le=28),
                 pool_kernel: int = Query(ModelConfig.pool_kernel, ge=1, le=28),
                 pool_stride: int = Query(ModelConfig.pool_stride, ge=1, le=28),
                 c1: int = Query(ModelConfig.channels[0], ge=1, le=512),
                 c2: int = Query(ModelConfig.channels[1], ge=1, le=512),
                 fc_units: int = Query(ModelConfig.fc_units, ge=1, le=4096)):  # defaults: the tutorial's network
    from mnist_cnn.insight.explain import summary

    try:
        cfg = ModelConfig(channels=(c1, c2), kernel_size=kernel_size, pool_kernel=pool_kernel,
                          pool_stride=pool_stride, fc_units=fc_units)  # refuses a map that shrinks below 1x1
    except ConfigError as e:
        raise HTTPException(422, str(e)) from None
    side = conv_layers(cfg)[-1].side_out
    fc1_params = (c2 * side * side + 1) * fc_units
    if fc1_params > MAX_SHAPES_PARAMS:
        raise HTTPException(422, f"fc1 alone would have {fc1_params:,} parameters ({c2}x{side}x{side} inputs x "
                                 f"{fc_units} units); this page builds networks up to {MAX_SHAPES_PARAMS:,}")
    return summary(cfg)


def install(api) -> None:
    """Add the learning routes and their session store to the app."""
    api.state.teach = Sessions()
    api.include_router(router)

