"""The tutorial's pipeline, kept faithful, as the yardstick: `bench` times it beside ours, tests load our
checkpoints into its `Net`.

What the tutorial's README describes, and nothing more: torchvision's MNIST `Dataset`, per-sample
`ToTensor()` + `Normalize((0.5,), (0.5,))`, a shuffled `DataLoader` at batch 64, `Net` (conv 1->32 3x3, ReLU,
pool 2/2, conv 32->64 3x3, ReLU, pool 2/2, fc 1600->128, ReLU, fc 128->10), cross-entropy, Adam 1e-3,
5 epochs, test accuracy after each epoch, `torch.save(model.state_dict(), "mnist_cnn_model.pth")`.
Do not speed this file up: its slowness is the point of comparison.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 5 * 5)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # --dataset -> the torchvision class reading it


def loaders(data_dir: str = "data", batch_size: int = 64, dataset: str = "mnist"):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    kind = getattr(datasets, TORCHVISION[dataset])
    train_set = kind(root=data_dir, train=True, download=False, transform=transform)
    test_set = kind(root=data_dir, train=False, download=False, transform=transform)
    return (torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True),
            torch.utils.data.DataLoader(test_set, batch_size=batch_size, shuffle=False))


def test_accuracy(model, test_loader, device="cpu", max_batches=None) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i, (images, labels) in enumerate(test_loader):
            if i == max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return correct / total


def run(data_dir: str = "data", epochs: int = 5, log=print, on_epoch=None, device: str = "cpu",
        max_batches: int | None = None, dataset: str = "mnist") -> tuple[Net, list[dict]]:
    """The tutorial's training script as a function. Returns the model and per-epoch metrics.

    Measurement hooks only (they change nothing the tutorial does): `device` moves each batch the way
    pytorch/examples does, so `bench --device cuda` compares like with like; `max_batches` cuts both loops
    short for the tests' tiny budget; `train_seconds` in the history is the training part of `seconds`;
    `dataset` swaps torchvision's MNIST class for FashionMNIST (same files, same transform).
    """
    train_loader, test_loader = loaders(data_dir, dataset=dataset)
    model = Net().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        running_loss, n_batches, n_images = 0.0, 0, 0
        for images, labels in train_loader:
            if n_batches == max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            n_batches += 1
            n_images += labels.size(0)
        train_seconds = time.perf_counter() - t0
        acc = test_accuracy(model, test_loader, device, max_batches)
        history.append({"epoch": epoch + 1, "train_loss": running_loss / n_batches, "test_accuracy": acc,
                        "seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "images": n_images})
        log(f"[tutorial] epoch {epoch + 1}/{epochs}  loss {history[-1]['train_loss']:.4f}  "
            f"test accuracy {100 * acc:.2f}%  {history[-1]['seconds']:.1f}s")
        if on_epoch is not None:
            on_epoch(model, history)
    return model, history
