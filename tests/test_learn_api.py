"""The learning views' API: /api/explain for every layer kind, its numbers checked against PyTorch's own layers;
/api/teach on private, bounded session copies; /api/shapes; bad units are 422, never 5xx."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webutil import tiny_model

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mnist_cnn import checkpoint  # noqa: E402
from mnist_cnn.data import normalize  # noqa: E402
from mnist_cnn.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, mnist):
    return tiny_model(tmp_path_factory.getbasetemp(), mnist)


@pytest.fixture(scope="module")
def app(model_path, mnist_dir):
    return create_app(model_path, mnist_dir)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def torch_layers(model_path, mnist):
    """The reference: PyTorch's own modules, run layer by layer with plain F.* calls on test digit 0."""
    model, _ = checkpoint.load(model_path)
    x = normalize(mnist.test_images[:1])  # (1, 1, 28, 28)
    with torch.no_grad():
        c1 = F.conv2d(x, model.conv1.weight, model.conv1.bias)  # before ReLU
        p1 = F.max_pool2d(F.relu(c1), 2, 2)
        c2 = F.conv2d(p1, model.conv2.weight, model.conv2.bias)
        p2 = F.max_pool2d(F.relu(c2), 2, 2)
        h = F.linear(p2.flatten(1), model.fc1.weight, model.fc1.bias)
        z = F.linear(F.relu(h), model.fc2.weight, model.fc2.bias)
    return {"conv1": c1[0], "pool1": p1[0], "conv2": c2[0], "pool2": p2[0], "fc1": h[0], "fc2": z[0]}


@pytest.fixture(scope="module")
def pixels(mnist):
    return mnist.test_images[0].tolist()


def explain(client, pixels, **unit):
    return client.post("/api/explain", json={"pixels": pixels, "unit": unit})


@pytest.mark.parametrize("layer,channel,y,x", [("conv1", 5, 12, 14), ("conv2", 40, 4, 6), ("conv1", 0, 0, 0)])
def test_conv_unit_arithmetic_matches_pytorch(client, pixels, torch_layers, layer, channel, y, x):
    r = explain(client, pixels, layer=layer, channel=channel, y=y, x=x)
    assert r.status_code == 200, r.text
    u = r.json()
    want = float(torch_layers[layer][channel, y, x])  # PyTorch's conv2d output, before ReLU
    assert u["sum"] == pytest.approx(want, abs=1e-4)
    assert u["relu"] == pytest.approx(max(want, 0.0), abs=1e-4) and u["model"] == pytest.approx(u["relu"], abs=1e-4)
    products = torch.tensor(u["patch"]) * torch.tensor(u["kernel"])
    assert torch.allclose(products, torch.tensor(u["products"], dtype=products.dtype), atol=1e-6)
    assert sum(u["channel_sums"]) + u["bias"] == pytest.approx(u["sum"], abs=1e-4)
    k = len(u["kernel"][0])
    assert len(u["patch"]) == (1 if layer == "conv1" else 32) and k == 3
    if layer == "conv1":  # the patch in normalised units is (pixel/255 - 0.5) / 0.5 of the drawn pixels
        raw = torch.tensor([row[x:x + k] for row in pixels[y:y + k]], dtype=torch.float64)
        assert torch.allclose(torch.tensor(u["patch"][0], dtype=torch.float64), (raw / 255 - 0.5) / 0.5, atol=1e-6)


@pytest.mark.parametrize("layer,src", [("pool1", "conv1"), ("pool2", "conv2")])
def test_pool_unit_names_the_winner(client, pixels, torch_layers, layer, src):
    r = explain(client, pixels, layer=layer, channel=3, y=2, x=3)
    assert r.status_code == 200, r.text
    u = r.json()
    window = F.relu(torch_layers[src][3, 4:6, 6:8])
    assert torch.allclose(torch.tensor(u["window"], dtype=window.dtype), window, atol=1e-5)
    wy, wx = u["winner"]
    assert u["value"] == pytest.approx(float(window.max()), abs=1e-5) == u["window"][wy][wx]
    assert u["model"] == pytest.approx(float(torch_layers[layer][3, 2, 3]), abs=1e-5) and u["params"] == 0


def test_fc_units_and_softmax(client, pixels, torch_layers):
    u = explain(client, pixels, layer="fc1", index=17).json()
    assert u["sum"] == pytest.approx(float(torch_layers["fc1"][17]), abs=1e-4)
    assert u["relu"] == pytest.approx(max(u["sum"], 0.0), abs=1e-6) and u["inputs"] == 1600
    assert sum(t["product"] for t in u["top"]) + u["rest_sum"] + u["bias"] == pytest.approx(u["sum"], abs=1e-4)
    assert all(abs(t["value"] * t["weight"] - t["product"]) < 1e-6 for t in u["top"])
    z = torch_layers["fc2"]
    u = explain(client, pixels, layer="fc2", index=7).json()
    assert u["sum"] == pytest.approx(float(z[7]), abs=1e-4) and u["inputs"] == 128
    sm = u["softmax"]
    assert sm["total"] == pytest.approx(sum(sm["exp"])) and sum(sm["probabilities"]) == pytest.approx(1.0)
    assert sm["probabilities"] == pytest.approx(F.softmax(z.double(), 0).tolist(), abs=1e-6)


@pytest.mark.parametrize("unit,words", [
    ({"layer": "conv3", "channel": 0, "y": 0, "x": 0}, "layer must be one of"),
    ({"layer": "conv1", "channel": 32, "y": 0, "x": 0}, "channel must be in 0..31"),
    ({"layer": "conv1", "channel": 0, "y": 26, "x": 0}, "y must be in 0..25"),
    ({"layer": "pool2", "channel": 0, "y": 0, "x": -1}, "x must be in 0..4"),
    ({"layer": "conv2", "channel": 0, "y": 0}, "x must be an integer"),
    ({"layer": "fc1", "index": 128}, "index must be in 0..127"),
    ({"layer": "fc2"}, "index must be an integer"),
])
def test_bad_units_are_422_with_a_message(client, pixels, unit, words):
    r = client.post("/api/explain", json={"pixels": pixels, "unit": unit})
    assert r.status_code == 422 and words in r.json()["detail"], r.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unit=st.dictionaries(st.sampled_from(["layer", "channel", "y", "x", "index"]),
                            st.one_of(st.integers(-10**12, 10**12), st.text(max_size=8), st.none(), st.booleans(),
                                      st.floats(allow_nan=True), st.sampled_from(["conv1", "pool2", "fc2"]))))
def test_fuzzed_units_never_5xx(client, pixels, unit):
    r = client.post("/api/explain", json={"pixels": pixels, "unit": unit})
    assert r.status_code in (200, 422), (unit, r.status_code, r.text)


def test_teach_step_lowers_the_loss_on_a_private_copy(app, pixels, model_path):
    served = {k: v.clone() for k, v in app.state.engine.model.state_dict().items()}
    alice, bob = TestClient(app), TestClient(app)
    before_bob = bob.post("/api/predict", json={"pixels": pixels}).json()["probabilities"]
    r = alice.post("/api/teach", json={"pixels": pixels, "label": 3})  # test digit 0 is a 7: teach it "3"
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["loss_after"] < t["loss_before"] and t["steps"] == 1
    assert t["probabilities_after"][3] > t["probabilities_before"][3]
    u = t["update"]
    assert u["new"] == pytest.approx(u["old"] - u["lr"] * u["grad"], abs=1e-7)
    assert len(t["saliency"]) == 28 and len(t["fc2_grad"]) == 10 and len(t["fc2_grad"][0]) == 128
    assert t["train_eval_max_diff"] == 0.0  # no dropout, no batch norm: train() and eval() compute the same
    # the served weights and another browser's view are untouched
    assert all(torch.equal(served[k], v) for k, v in app.state.engine.model.state_dict().items())
    assert bob.post("/api/predict", json={"pixels": pixels}).json()["probabilities"] == before_bob
    assert bob.post("/api/teach", json={"pixels": pixels, "label": 3}).json()["steps"] == 1  # its own copy
    assert alice.post("/api/teach/reset").json() == {"reset": True}
    assert alice.post("/api/teach", json={"pixels": pixels, "label": 3}).json()["steps"] == 1


def test_without_zero_grad_gradients_accumulate(app, pixels):
    c = TestClient(app)
    a = c.post("/api/teach", json={"pixels": pixels, "label": 1, "lr": 1e-6}).json()
    b = c.post("/api/teach", json={"pixels": pixels, "label": 1, "lr": 1e-6, "zero_grad": False}).json()
    assert a["backwards_in_grad"] == 1 and b["backwards_in_grad"] == 2
    assert b["grad_norm"] == pytest.approx(2 * a["grad_norm"], rel=1e-3)  # two nearly equal gradients, summed


def test_sessions_are_bounded(app, pixels):
    store = app.state.teach
    limit, store.limit = store.limit, 1
    try:
        first, second = TestClient(app), TestClient(app)
        assert first.post("/api/teach", json={"pixels": pixels, "label": 0}).json()["steps"] == 1
        assert second.post("/api/teach", json={"pixels": pixels, "label": 0}).status_code == 200
        assert len(store) == store.limit  # the least recently used copy made room: first's is gone
        assert first.post("/api/teach", json={"pixels": pixels, "label": 0}).json()["steps"] == 1
    finally:
        store.limit = limit


def test_shapes_for_a_configured_network(client):
    s = client.get("/api/shapes").json()
    assert s["params"] == 225_034
    s = client.get("/api/shapes?kernel_size=5&pool_kernel=3&pool_stride=2").json()
    assert [row["name"] for row in s["layers"]][:2] == ["input", "conv1"]
    r = client.get("/api/shapes?kernel_size=12")
    assert r.status_code == 422 and "larger than" in r.json()["detail"]
    r = client.get("/api/shapes?kernel_size=1&pool_kernel=1&pool_stride=1&c2=512&fc_units=4096")
    assert r.status_code == 422 and "parameters" in r.json()["detail"]


def test_learning_views_share_the_servers_worker_bound(app, pixels):
    """A flood of explain and teach requests runs in the server's --decoders worker threads (shared with upload
    decoding), not in an unbounded pool where it could take every core from /api/predict."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def pool_threads() -> set:  # threads of an unbounded pool (Starlette's run_in_threadpool: AnyIO's workers)
        return {t.ident for t in threading.enumerate() if t.name.startswith("AnyIO worker")}

    before = pool_threads()
    unit = {"layer": "conv2", "channel": 1, "y": 2, "x": 3}
    with TestClient(app) as client, ThreadPoolExecutor(12) as clients:  # one event loop, 12 concurrent clients
        calls = [("/api/explain", {"pixels": pixels, "unit": unit})] * 20 + [("/api/teach", {"pixels": pixels,
                                                                                              "label": 1})] * 4
        codes = [r.status_code for r in clients.map(lambda call: client.post(call[0], json=call[1]), calls)]
    assert codes == [200] * len(calls)
    assert pool_threads() - before == set()  # none ran in an unbounded pool (a new event loop: new workers)
    assert any(t.name.startswith("mnist-cnn-work") for t in threading.enumerate())  # they ran in WorkPool's threads


def test_samples_are_real_test_images_and_bounded(client, mnist):
    """/api/samples (the page's gallery for a non-digit model): distinct test images with their true labels;
    asking for more than MAX_SAMPLES is 422, not a big answer."""
    from mnist_cnn.serve.app import MAX_SAMPLES

    got = client.get("/api/samples?n=5").json()
    assert got["classes"] == [str(d) for d in range(10)] and len({s["index"] for s in got["samples"]}) == 5
    for s in got["samples"]:
        assert s["pixels"] == mnist.test_images[s["index"]].tolist()
        assert s["label"] == int(mnist.test_labels[s["index"]]) and s["class_name"] == str(s["label"])
    for bad in (0, MAX_SAMPLES + 1, "x"):
        assert client.get(f"/api/samples?n={bad}").status_code == 422
    assert client.get("/api/model").json()["classes"] == [str(d) for d in range(10)]
