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

A Net decides once, when it is built (`Net(cfg, fused=None)`: auto), whether it uses the kernel: `unsupported()`
says why not (conv1 with one input channel, stride 1, no padding and a multiple of 16 output channels, a 2x2
stride-2 pool, and a C compiler: `$CC`, cc, gcc or clang) and the Net keeps that reason as `fused_reason`. Then
per call, `fits()`: a CPU input of the built size that needs no gradient (saliency maps take the eager path),
fp32 or bf16. Otherwise the eager layers run: the same numbers, slower. Nothing here is decided per process.

The compiled library is cached in `cache_dir()` only if that folder is this user's own, not a symlink and not
writable by group or others; otherwise it is compiled into a fresh private temp folder (mkdtemp) for this
process. A cached library is loaded only if its bytes hash to the sha256 recorded beside it when it was
compiled; a file we did not compile is compiled over, never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("fused.c")
# tried in order; the first that compiles is kept (no OpenMP: one thread; no -march=native: no AVX-512)
FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-march=native"], ["-O3"])


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


# -----------------------------------------------------------------------------
# compiling and loading: a library is loaded only from a folder no one else can write, with its recorded hash


def _folder_problem(folder: Path) -> str | None:
    """None if `folder` (made if missing, mode 0700) is this user's own real folder that no one else may write."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as e:
        return f"cannot make {folder} ({e.strerror or e})"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{folder} is a symlink or not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{folder} belongs to another user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{folder} is writable by group or others"
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_recorded(so: Path, digest: str | None = None) -> ctypes.CDLL | None:
    """The library `so` if its bytes hash to `digest` (default: the sha256 recorded beside it at compile time)."""
    try:
        digest = digest or so.with_suffix(".sha256").read_text().strip()
        if so.is_symlink() or _sha256(so) != digest:
            return None
    except OSError:
        return None
    return ctypes.CDLL(str(so))


def _compile_into(cc: str, defines: list[str], out: Path) -> ctypes.CDLL:
    """Compile fused.c to `out` in a private folder, record its sha256 beside it, and load it."""
    error = ""
    for flags in FLAGS:  # a temp name, then a rename: ranks of one torchrun may compile at the same moment
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            run = subprocess.run([cc, *flags, "-std=gnu11", "-shared", "-fPIC", *defines, str(SOURCE), "-o", tmp],
                                 capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                digest = _sha256(Path(tmp))
                os.replace(tmp, out)
                sidecar = out.with_suffix(f".{os.getpid()}.tmp")
                sidecar.write_text(digest + "\n")
                os.replace(sidecar, out.with_suffix(".sha256"))
                lib = _load_recorded(out, digest)
                if lib is None:
                    raise OSError(f"{out} changed between compiling and loading it")
                return lib
            error = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(f"{cc} failed: {error}")


def _build(defines: list[str]) -> ctypes.CDLL:
    """The kernel compiled with `defines`: from the cache when it is private and holds our recorded build, else
    compiled (into the cache, or into a fresh private temp folder that is gone once the library is loaded)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise OSError("no C compiler found (install gcc, or set CC)")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *defines, platform.machine(), _cpu_id()]).encode())
    name = f"fused-{key.hexdigest()[:16]}.so"
    folder = cache_dir()
    if _folder_problem(folder) is None:
        return _load_recorded(folder / name) or _compile_into(cc, defines, folder / name)
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-kernel-") as tmp:  # mkdtemp: mode 0700, a random name
        return _compile_into(cc, defines, Path(tmp) / name)


@cache
def _load(channels: int, kernel: int, height: int, width: int) -> tuple[ctypes.CDLL | None, str | None]:
    """(the compiled kernel for one shape, None) or (None, why there is none); once per shape per process."""
    try:
        lib = _build([f"-DC={channels}", f"-DK={kernel}", f"-DH={height}", f"-DW={width}"])
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"unavailable ({e})"
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.conv1_pool_relu_forward.argtypes = [p, p, p, i, p, i, p]
    lib.conv1_pool_relu_backward.argtypes = [p, p, i, p, i, i, p, p, p]
    return lib, None


# -----------------------------------------------------------------------------
# when it runs: decided once per model (unsupported), then checked per call (fits)


def unsupported(conv: torch.nn.Conv2d, pool: torch.nn.MaxPool2d, image_size: int) -> str | None:
    """Why fused.c cannot run these layers on `image_size` inputs, as a phrase for logs; None if it can (the kernel
    is compiled and loaded here). Asked once, when a Net is built."""
    if (conv.in_channels, conv.stride, conv.padding, conv.dilation, conv.groups) != (1, (1, 1), (0, 0), (1, 1), 1) \
            or conv.bias is None or conv.kernel_size[0] != conv.kernel_size[1]:
        return "not for this conv1 (it needs 1 input channel, a square kernel, stride 1, no padding, a bias)"
    if conv.out_channels % 16:
        return f"not for {conv.out_channels} conv1 channels (it needs a multiple of 16)"
    if (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode) != (2, 2, 0, 1, False):
        return "not for this pool (it needs 2x2, stride 2)"
    return _load(conv.out_channels, conv.kernel_size[0], image_size, image_size)[1]


def fits(x: torch.Tensor, conv: torch.nn.Conv2d, image_size: int) -> bool:
    """Per call, for a model whose layers are supported: a CPU input (B > 0, 1, S, S) that needs no gradient
    (saliency maps take the eager path), weights on the CPU, fp32 or bf16 out."""
    if torch.compiler.is_compiling():  # torch.export / torch.compile trace fake tensors: C cannot read them
        return False
    return (x.device.type == "cpu" and conv.weight.device.type == "cpu" and not x.requires_grad and x.dim() == 4
            and x.shape[0] > 0 and tuple(x.shape[1:]) == (1, image_size, image_size)
            and out_dtype(x) in (torch.float32, torch.bfloat16))


def out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def conv1_pool_relu(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """relu(max_pool2d(conv(x), 2)): (B, 1, H, W) -> (B, C, (H-K+1)//2, (W-K+1)//2), channels_last. Call only
    where unsupported() said None and fits() says yes."""
    backward = torch.is_grad_enabled() and (conv.weight.requires_grad or conv.bias.requires_grad)
    return _Conv1PoolReLU.apply(x, conv.weight, conv.bias, out_dtype(x), backward)


class _Conv1PoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype, backward):  # (forward itself runs with grad mode off)
        B, _, H, W = x.shape
        C, _, K, _ = weight.shape
        lib, _ = _load(C, K, H, W)
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
        _load(C, K, H, W)[0].conv1_pool_relu_backward(
            x.data_ptr(), g.data_ptr(), int(g.dtype == torch.bfloat16), idx.data_ptr(), B, threads,
            partial.data_ptr(), dwt.data_ptr(), db.data_ptr())
        w_dtype, b_dtype = ctx.dtypes
        return None, dwt.t().reshape(C, 1, K, K).to(w_dtype), db.to(b_dtype), None, None
