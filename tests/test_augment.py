"""train --augment's pieces: the distortion keeps images valid, low resolution acts like an 8x8 icon, printed digits."""

import numpy as np
import torch

from mnist_cnn import augment as A
from mnist_cnn.data import normalize


def test_augment_keeps_shape_range_and_labels(mnist):
    x, y = normalize(mnist.train_images[:256]).float(), mnist.train_labels[:256]
    z, y2 = A.augment(x, y, torch.Generator().manual_seed(0))
    assert z.shape == x.shape and torch.equal(y2, y)
    assert z.min() >= -1.0 and z.max() <= 1.0 + 1e-6
    assert (z[:, :, 0, :] < -0.9).float().mean() > 0.9  # the top row is still mostly background
    assert not torch.equal(z, x)
    again, _ = A.augment(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)  # the same generator state gives the same distortion


def test_low_resolution_blurs_like_a_tiny_image_and_restretches():
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 4:24, 12:15] = 1.0  # a vertical bar, 3 px wide: a "1"
    out = A.low_resolution(x, torch.tensor([0, 8, 12]))
    assert torch.equal(out[0], x[0])  # side 0: untouched
    for i in (1, 2):
        assert abs(float(out[i].max()) - 1.0) < 1e-6  # ink re-stretched to full level, as scale_to_box does
        assert float((out[i] > 0.05).sum()) > float((x[i] > 0).sum())  # spread wider: a blur
    assert float((out[1] > 0.05).sum()) > float((out[2] > 0.05).sum())  # 8 px is blurrier than 12 px


def test_printed_digits_are_mnist_like_and_leave_the_test_fonts_out():
    images, labels = A.printed_digits()
    assert images.shape == (10 * len(A.PRINTED_FACES), 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == list(range(10)) * len(A.PRINTED_FACES)
    assert not any("DejaVu" in f or "Liberation" in f for f in A.PRINTED_FACES)  # the held-out fonts of docs/predict.md
    x = images.float().numpy()
    for im in x:  # each is a preprocessed digit: ink, centre of mass within a pixel of (14, 14)
        mass = im.sum()
        cy = (im.sum(1) * np.arange(28)).sum() / mass
        cx = (im.sum(0) * np.arange(28)).sum() / mass
        assert mass > 0 and abs(cy - 14) < 1 and abs(cx - 14) < 1


def test_printed_digits_replace_a_share_of_the_batch():
    images, labels = A.printed_digits()
    printed = (normalize(images).float(), labels)
    x, y = torch.full((64, 1, 28, 28), -1.0), torch.full((64,), 11)  # blank images, label 11 (not a digit)
    z, y2 = A.augment(x, y, torch.Generator().manual_seed(1), printed)
    k = round(64 * A.PRINTED)
    assert (y2[:k] <= 9).all() and (y2[k:] == 11).all()
    assert (z[:k] > -1).flatten(1).any(1).all() and (z[k:] == -1).all()  # ink only where a digit was put


def test_stroke_weight_runs_from_erosion_through_identity_to_a_5x5_dilation():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 6:22, 13:15] = 1.0  # a bar 2 px wide
    width = lambda w: int((A.stroke_weight(x, torch.tensor([w])) > 0.5)[0, 0, 14].sum())  # noqa: E731
    assert width(0.0) == 2 and width(-1.0) == 0  # unchanged; the 3x3 erosion wipes a 2-px stroke out
    assert width(1.0) == 4 and width(2.0) == 6  # the 3x3 dilation adds a pixel per side, the 5x5 two
    assert width(0.4) == 2 and width(1.6) == 6  # blends: the grey rim crosses 0.5 only past half-way


def test_light_on_photographed_images_only_crops_and_mirrors_exact_pixels():
    x = torch.rand(32, 1, 28, 28) * 2 - 1  # normalized at 0.5/0.5: background (pixel 0) is -1
    z, _ = A.light(x, None, torch.Generator().manual_seed(0), photographed=True)
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # (32, 1, 32, 32): every 28x28 crop of it
    crops = pad.unfold(2, 28, 1).unfold(3, 28, 1)  # (32, 1, 5, 5, 28, 28)
    for i in range(32):
        views = torch.cat([crops[i, 0].reshape(25, 28, 28), crops[i, 0].flip(-1).reshape(25, 28, 28)])
        assert (views - z[i, 0]).abs().amax((1, 2)).min() < 1e-5  # one whole-pixel crop, maybe mirrored, exactly
    mirrored = [(crops[i, 0].flip(-1).reshape(25, 28, 28) - z[i, 0]).abs().amax((1, 2)).min() < 1e-5
                for i in range(32)]
    assert 4 < sum(mirrored) < 28  # about half are mirrored
    w, _ = A.light(x, None, torch.Generator().manual_seed(0))  # written things: resampled (rotation, zoom)
    assert not torch.allclose(w, z)
