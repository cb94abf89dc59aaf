"""Fuzzing what a user's input reaches beyond files: image preprocessing (hypothesis) and the web API's OpenAPI
schema (schemathesis). Bounded example counts; docs/reliability.md has the counts of the longer runs."""

import io
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mnist_cnn.predict.preprocess import PreprocessError, preprocess

SCALE = int(os.environ.get("MNIST_CNN_FUZZ_SCALE", "1"))


def valid_or_refused(source):
    """A valid (1, 28, 28) input in [-1, 1], or one PreprocessError line. The work per input is bounded by what the
    strategies draw (at most 200x200 pixels, a few kB of bytes), not by a clock."""
    try:
        x = preprocess(source)
    except PreprocessError as e:
        assert str(e) and "\n" not in str(e)
        x = None
    if x is not None:
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    return x


dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_, np.int8])
shapes = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=80),
                   st.tuples(st.integers(0, 60), st.integers(0, 60), st.sampled_from([1, 2, 3, 4, 5])),
                   hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))


@settings(max_examples=150 * SCALE, deadline=None)
@given(data=st.data(), dtype=dtypes, shape=shapes)
def test_preprocess_on_arbitrary_arrays(data, dtype, shape):
    valid_or_refused(data.draw(hnp.arrays(dtype, shape)))


@settings(max_examples=100 * SCALE, deadline=None)
@given(mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "F", "I;16", "CMYK", "YCbCr", "HSV"]),
       w=st.integers(1, 200), h=st.integers(1, 200), seed=st.integers(0, 2**16),
       fmt=st.sampled_from([None, "PNG", "BMP", "GIF", "TIFF", "JPEG", "WEBP", "PPM"]), cut=st.integers(0, 64))
def test_preprocess_on_images_of_any_mode_size_and_format(mode, w, h, seed, fmt, cut):
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8))
    try:
        img = img.convert(mode)
    except ValueError:
        return
    if fmt is None:
        valid_or_refused(img)
        return
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write this mode in this format
    raw = buf.getvalue()
    valid_or_refused(raw[:len(raw) - cut] if cut else raw)


@settings(max_examples=200 * SCALE, deadline=None)
@given(raw=st.binary(max_size=4000))
def test_preprocess_on_arbitrary_bytes(raw):
    valid_or_refused(raw)


# -----------------------------------------------------------------------------
# the web API, from its own OpenAPI schema

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def web_schema(tmp_path_factory, mnist, mnist_dir):
    from webutil import tiny_model

    from mnist_cnn.serve.app import create_app

    app = create_app(tiny_model(tmp_path_factory.getbasetemp(), mnist), mnist_dir)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_web_api_from_its_openapi_schema_never_5xx(web_schema):
    """Every operation in /openapi.json, with requests schemathesis derives from it (valid and invalid ones).
    Driven by hand with hypothesis: schemathesis' pytest plugin (4.32) fails to collect under pytest 9."""
    operations = [result.ok() for result in web_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/predict"}
    tried = []
    for op in operations:
        @settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def no_5xx(case):
            response = case.call()
            tried.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:200])

        no_5xx()
    assert len(tried) >= len(operations)
