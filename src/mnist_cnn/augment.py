"""`train --augment`: random affine distortions (and stroke weight), one per image, applied per batch on the device.

MNIST's digits were written by 500 people on one form and normalized one way; a user's digit is slanted,
rotated, narrower or bolder than any of them. Showing the network each training digit slightly distorted
every epoch teaches it that these changes do not change the class. The distortion is a random affine map
per image (rotation, shear, anisotropic scale, shift), built as one (B, 2, 3) matrix batch and applied with
F.affine_grid + F.grid_sample on the whole normalized batch where it already lives (GPU or CPU): no
per-sample PIL work, no DataLoader workers. A random stroke weight (a blend towards a 3x3 max-pool, i.e. a
grey-level dilation, or towards a min-pool, an erosion) covers thin pen lines and bold markers.

The random numbers come from the training generator (CPU, so runs are repeatable with --seed); only the
(B, 2, 3) matrices and (B,) weights travel to the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROTATE_DEG = 12.0  # |rotation| up to this
SHEAR_DEG = 12.0  # |horizontal shear| up to this: slanted handwriting
SCALE = (0.85, 1.1)  # zoom per axis (independent, so the aspect ratio changes a little too)
SHIFT_PX = 2.0  # |shift| up to this many pixels (preprocessing centres by mass; this covers its jitter)
WEIGHT = (-0.6, 0.6)  # stroke weight: <0 blends towards erosion, >0 towards dilation
BACKGROUND = -1.0  # the normalized value of a black pixel: (0/255 - 0.5) / 0.5


def _uniform(n, lo, hi, generator):
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def random_affine_matrices(n: int, generator: torch.Generator | None = None, side: int = 28) -> torch.Tensor:
    """(n, 2, 3) matrices for F.affine_grid (output coords -> input coords, both in [-1, 1])."""
    rot = torch.deg2rad(_uniform(n, -ROTATE_DEG, ROTATE_DEG, generator))
    shear = torch.tan(torch.deg2rad(_uniform(n, -SHEAR_DEG, SHEAR_DEG, generator)))
    sx, sy = _uniform(n, *SCALE, generator), _uniform(n, *SCALE, generator)
    tx, ty = (_uniform(n, -SHIFT_PX, SHIFT_PX, generator) * 2 / side for _ in range(2))
    cos, sin = torch.cos(rot), torch.sin(rot)
    # forward map A = R @ Shear @ S; the grid needs its inverse (where each output pixel comes from)
    a = torch.stack([torch.stack([cos * sx, (cos * shear - sin) * sy], -1),
                     torch.stack([sin * sx, (sin * shear + cos) * sy], -1)], -2)  # (n, 2, 2)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]  # (n,), > 0: scales and |angles| are small
    inv = torch.stack([torch.stack([a[:, 1, 1], -a[:, 0, 1]], -1),
                       torch.stack([-a[:, 1, 0], a[:, 0, 0]], -1)], -2) / det.view(-1, 1, 1)  # (n, 2, 2)
    t = -(inv @ torch.stack([tx, ty], -1).unsqueeze(-1))  # (n, 2, 1)
    return torch.cat([inv, t], dim=-1)  # (n, 2, 3)


def stroke_weight(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Blend each image towards its grey-level dilation (w > 0) or erosion (w < 0) by |w|. x: (B, 1, H, W)."""
    thick = F.max_pool2d(x, 3, 1, 1)
    thin = -F.max_pool2d(-x, 3, 1, 1)
    w = w.view(-1, 1, 1, 1)
    return torch.where(w >= 0, x + w * (thick - x), x + (-w) * (thin - x))


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Normalized batch (B, 1, 28, 28), background -1 -> the same batch, each image randomly distorted."""
    n = x.shape[0]
    theta = random_affine_matrices(n, generator, x.shape[-1]).to(x.device, x.dtype)  # (B, 2, 3)
    w = _uniform(n, *WEIGHT, generator).to(x.device, x.dtype)  # (B,)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, 28, 28, 2)
    # grid_sample pads with 0, which is mid-grey here: shift so the background is 0 while sampling
    y = F.grid_sample(x - BACKGROUND, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return stroke_weight(y + BACKGROUND, w)

