"""conv1 + 2x2 max-pool + ReLU as one C loop on the CPU (fused.c), compiled with the machine's C compiler on
first use and cached.

The tutorial's first block is little arithmetic (~25 MFLOP for a batch of 64) and a lot of memory traffic: a
(B, 32, 26, 26) conv output, int64 pool indices, and in the backward a zero-filled (B, 32, 26, 26) gradient
that the pool scatters into. fused.c never stores the 26x26 map: per pooled output it computes the four conv
values, keeps the largest (one byte says which), adds the bias and applies ReLU. Same function, same
gradients: tests/test_fused.py checks both against conv2d + max_pool2d + relu, ties included.

Measured on this 2-core AMD EPYC (Zen 4), torch 2.14.1, 2 threads, batch 64, bf16 out: the C forward 147 us and
backward 164 us; the block's forward + backward through autograd, best of 10 x 100 interleaved, 1.60 ms eager
(conv2d, max_pool2d, relu), 0.50 ms fused; a whole training step, best of 12 x 60: 6.75 ms eager, 4.93 ms fused.

Net.features uses it when `applies()`: a CPU input that needs no gradient (saliency maps take the eager path),
conv1 with one input channel, stride 1, no padding and a multiple of 16 output channels, a 2x2 stride-2 pool,
fp32 or bf16, and a C compiler (`$CC`, cc, gcc or clang). Otherwise, or with MNIST_CNN_FUSED=0, the eager
layers run: the same numbers, slower. `why_not()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("fused.c")
# tried in order; the first that compiles is kept (no OpenMP: one thread; no -march=native: no AVX-512)
FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-march=native"], ["-O3"])
_problem: str | None = None  # why the last library() call found no kernel (None: it found one)


def cache_dir() -> Path:
    root = os.environ.get("MNIST_CNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mnist-cnn")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _compile(defines: list[str]) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise OSError("no C compiler found (install gcc, or set CC)")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *defines, platform.machine(), _cpu_id()]).encode())
    name = f"fused-{key.hexdigest()[:16]}.so"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"mnist-cnn-{uid}"):  # the temp one: a read-only home
        out = folder / name
        if out.exists():
            return out
        try:
            folder.mkdir(parents=True, exist_ok=True)
            break
        except OSError as e:
            error = str(e)
    else:
        raise OSError(f"no folder to compile into ({error})")
    error = ""
    for flags in FLAGS:  # a temp name, then a rename: ranks of one torchrun may compile at the same moment
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            run = subprocess.run([cc, *flags, "-std=gnu11", "-shared", "-fPIC", *defines, str(SOURCE), "-o", tmp],
                                 capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                os.replace(tmp, out)
                return out
            error = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(f"{cc} failed: {error}")


def library(channels: int, kernel: int, height: int, width: int) -> ctypes.CDLL | None:
    """The compiled kernel for one shape, or None (why_not() says why)."""
    global _problem
    if os.environ.get("MNIST_CNN_FUSED", "1") == "0":
        _problem = "off (MNIST_CNN_FUSED=0)"
        return None
    lib, _problem = _load(channels, kernel, height, width)
    return lib


@cache
def _load(channels: int, kernel: int, height: int, width: int) -> tuple[ctypes.CDLL | None, str | None]:
    try:
        lib = ctypes.CDLL(str(_compile([f"-DC={channels}", f"-DK={kernel}", f"-DH={height}", f"-DW={width}"])))
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"unavailable ({e})"
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.conv1_pool_relu_forward.argtypes = [p, p, p, i, p, i, p]
    lib.conv1_pool_relu_backward.argtypes = [p, p, i, p, i, i, p, p, p]
    return lib, None


def describe(conv: torch.nn.Conv2d, pool: torch.nn.MaxPool2d, image_size: int) -> str:
    """"on" if a Net with these layers runs its first block here, otherwise why not: for logs and bench."""
    return "on" if applies(torch.zeros(1, 1, image_size, image_size), conv, pool) else why_not()


def why_not() -> str:
    """Why the last applies() said no, as a phrase for logs."""
    return _problem or "not used for this layer or input"


def applies(x: torch.Tensor, conv: torch.nn.Conv2d, pool: torch.nn.MaxPool2d) -> bool:
    global _problem
    _problem = None
    if x.device.type != "cpu" or x.requires_grad or x.dim() != 4 or x.shape[1] != 1 or x.shape[0] == 0:
        return False
    if torch.compiler.is_compiling():  # torch.export / torch.compile trace fake tensors: C cannot read them
        return False
    if (conv.stride, conv.padding, conv.dilation, conv.groups) != ((1, 1), (0, 0), (1, 1), 1) or conv.bias is None:
        return False
    if conv.out_channels % 16 or conv.kernel_size[0] != conv.kernel_size[1] or conv.weight.device.type != "cpu":
        return False
    if (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode) != (2, 2, 0, 1, False):
        return False
    if out_dtype(x) not in (torch.float32, torch.bfloat16):
        return False
    return library(conv.out_channels, conv.kernel_size[0], x.shape[2], x.shape[3]) is not None


def out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def conv1_pool_relu(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """relu(max_pool2d(conv(x), 2)): (B, 1, H, W) -> (B, C, (H-K+1)//2, (W-K+1)//2), channels_last. Call only
    where applies() said yes."""
    backward = torch.is_grad_enabled() and (conv.weight.requires_grad or conv.bias.requires_grad)
    return _Conv1PoolReLU.apply(x, conv.weight, conv.bias, out_dtype(x), backward)


class _Conv1PoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype, backward):  # (forward itself runs with grad mode off)
        B, _, H, W = x.shape
        C, _, K, _ = weight.shape
        lib = library(C, K, H, W)
        x = x.reshape(B, H, W).float().contiguous()  # (B, H, W)
        wt = weight.detach().float().reshape(C, K * K).t().contiguous()  # (K*K, C)
        b = bias.detach().float().contiguous()  # (C,)
        PH, PW = (H - K + 1) // 2, (W - K + 1) // 2
        y = torch.empty(B, PH, PW, C, dtype=dtype)  # NHWC
        idx = torch.empty(B, PH, PW, C, dtype=torch.uint8) if backward else None
        lib.conv1_pool_relu_forward(x.data_ptr(), wt.data_ptr(), b.data_ptr(), B, y.data_ptr(),
                                    int(dtype == torch.bfloat16), idx.data_ptr() if backward else None)
        if backward:
            ctx.save_for_backward(x, idx)
            ctx.kernel, ctx.dtypes = K, (weight.dtype, bias.dtype)
        return y.permute(0, 3, 1, 2)  # (B, C, PH, PW) in channels_last memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # grad (B, C, PH, PW) -> d weight (C, 1, K, K), d bias (C,)
        x, idx = ctx.saved_tensors
        B, H, W = x.shape
        C, K = idx.shape[3], ctx.kernel
        g = grad.permute(0, 2, 3, 1)  # NHWC
        if g.dtype not in (torch.float32, torch.bfloat16):
            g = g.float()
        g = g.contiguous()
        threads = torch.get_num_threads()
        partial = torch.empty(threads, K * K * C + C)
        dwt, db = torch.empty(K * K, C), torch.empty(C)
        library(C, K, H, W).conv1_pool_relu_backward(
            x.data_ptr(), g.data_ptr(), int(g.dtype == torch.bfloat16), idx.data_ptr(), B, threads,
            partial.data_ptr(), dwt.data_ptr(), db.data_ptr())
        w_dtype, b_dtype = ctx.dtypes
        return None, dwt.t().reshape(C, 1, K, K).to(w_dtype), db.to(b_dtype), None, None
