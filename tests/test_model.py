import hashlib
import json

import pytest
import torch

from mnist_cnn import checkpoint
from mnist_cnn.config import conv_layers
from mnist_cnn.errors import CheckpointError, ConfigError
from mnist_cnn.model import ModelConfig, Net, count_params
from mnist_cnn.perf import reference


def test_seed_network_shapes_and_params():
    net = Net()
    assert net.flat_features == 1600  # 64 * 5 * 5, found by a dummy forward pass
    assert [layer.side_out for layer in conv_layers(ModelConfig())] == [26, 13, 11, 5]
    assert count_params(net) == 225_034
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sorted(net.state_dict()) == sorted(reference.Net().state_dict())


@pytest.mark.parametrize("kw, sides, flat", [
    (dict(kernel_size=5), [24, 12, 8, 4], 64 * 4 * 4),
    (dict(kernel_size=2), [27, 13, 12, 6], 64 * 6 * 6),
    (dict(pool_kernel=3, pool_stride=2), [26, 12, 10, 4], 64 * 4 * 4),  # floor((26 - 3) / 2) + 1 = 12
    (dict(pool_kernel=4, pool_stride=4), [26, 6, 4, 1], 64 * 1 * 1),
    (dict(channels=(8, 16), fc_units=32, dropout=0.5), [26, 13, 11, 5], 16 * 5 * 5),
])
def test_configs_agree_with_formula(kw, sides, flat):
    """The formula (conv_layers) and the dummy forward pass (flat_features) against sizes worked out by hand."""
    cfg = ModelConfig(**kw)
    assert [layer.side_out for layer in conv_layers(cfg)] == sides
    net = Net(cfg)
    assert net.flat_features == flat
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kw", [dict(kernel_size=15), dict(pool_kernel=8, pool_stride=8), dict(channels=(0, 4)),
                                dict(dropout=1.0), dict(kernel_size=0)])
def test_impossible_configs_are_refused(kw):
    with pytest.raises(ConfigError):
        ModelConfig(**kw)


def test_checkpoint_round_trip_and_seed_net_loads_it(tmp_path):
    net = Net(ModelConfig(kernel_size=5, fc_units=64))
    path = tmp_path / "m.pth"
    checkpoint.save(path, net, {"epochs": 1}, [{"epoch": 1}])
    loaded, meta = checkpoint.load(path)
    assert meta["model"]["kernel_size"] == 5 and meta["history"] == [{"epoch": 1}]
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    seed_path = tmp_path / "seed.pth"
    checkpoint.save(seed_path, Net())
    seed = reference.Net()
    seed.load_state_dict(torch.load(seed_path, weights_only=True))  # the tutorial user's code, unchanged


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        checkpoint.load(junk)
    good = tmp_path / "good.pth"
    checkpoint.save(good, Net())
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        checkpoint.load(truncated)
    other = tmp_path / "other.pth"  # weights of the default net, JSON describing another architecture
    torch.save(Net().state_dict(), other)
    sha = hashlib.sha256(other.read_bytes()).hexdigest()  # the weights are intact; the description lies
    checkpoint.meta_path(other).write_text(json.dumps({"model": {"kernel_size": 5}, "sha256": sha}))
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        checkpoint.load(other)
