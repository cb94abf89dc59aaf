"""`mnist-cnn export MODEL --web DIR`: a static page that runs the model in the browser, from any file server.

    DIR/index.html      the page: a drawing pad, the prediction, 10 bars, the 28x28 input, a latency line
    DIR/page.js         drawing, onnxruntime-web session, painting; measureLatency() times it in the page
    DIR/preprocess.js   the server's preprocessing (predict/preprocess.py's to_mnist) ported step for step
    DIR/draw.js         the drawing pad (pointer events -> strokes), shared with the served page
    DIR/model.onnx      the exported model; DIR/model.json its metadata for the page
    DIR/ort/            onnxruntime-web's WebAssembly build: ort.wasm.min.js, the .wasm and its .mjs loader

onnxruntime-web comes from the npm registry at export time (`npm pack`, or the registry's tarball URL when npm is
missing), is checked against the sha512 integrity pinned below (the registry's `dist.integrity` for that
version), and is cached, checked again on every use, under the mnist-cnn cache folder. Nothing on the page
loads from anywhere but DIR: no CDN, no server code, so `python -m http.server -d DIR` or any other static
server will do, as will a copy on a web host.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from mnist_cnn.data import atomic_write
from mnist_cnn.errors import ExportError

ORT_WEB = "onnxruntime-web"
ORT_WEB_VERSION = "1.30.0"
# `npm view onnxruntime-web@1.30.0 dist.integrity`: the registry's sha512 of the tarball
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
ORT_WEB_URL = f"https://registry.npmjs.org/{ORT_WEB}/-/{ORT_WEB}-{ORT_WEB_VERSION}.tgz"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")  # from package/dist/
PAGE = Path(__file__).with_name("page")
PAGE_FILES = ("index.html", "page.js", "preprocess.js", "draw.js")  # draw.js, preprocess.js: the served page's too


def cache_file() -> Path:
    from mnist_cnn.perf.fused import cache_dir  # the mnist-cnn cache folder (MNIST_CNN_CACHE, else ~/.cache)

    return cache_dir().parent / "npm" / f"{ORT_WEB}-{ORT_WEB_VERSION}.tgz"


def integrity(raw: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(raw).digest()).decode("ascii")


def download() -> bytes:
    """The tarball from the npm registry: with npm if it is installed (its cache, proxy and registry settings),
    else straight from the registry's URL."""
    npm = shutil.which("npm")
    try:
        if npm:
            with tempfile.TemporaryDirectory(prefix="mnist-cnn-npm-") as tmp:
                run = subprocess.run([npm, "pack", f"{ORT_WEB}@{ORT_WEB_VERSION}", "--pack-destination", tmp,
                                      "--silent"], capture_output=True, text=True, timeout=600)
                if run.returncode != 0:
                    why = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
                    raise ExportError(f"npm pack {ORT_WEB}@{ORT_WEB_VERSION} failed: {why}")
                return (Path(tmp) / f"{ORT_WEB}-{ORT_WEB_VERSION}.tgz").read_bytes()
        with urllib.request.urlopen(ORT_WEB_URL, timeout=60) as r:
            return r.read()
    except (OSError, subprocess.SubprocessError) as e:
        raise ExportError(f"cannot fetch {ORT_WEB} {ORT_WEB_VERSION} from the npm registry ({e})") from None


def ort_web_tarball() -> bytes:
    """The verified tarball: from the cache if it is there and intact, else downloaded, checked and cached."""
    cached = cache_file()
    if cached.is_file() and integrity(cached.read_bytes()) == ORT_WEB_INTEGRITY:
        return cached.read_bytes()
    raw = download()
    if integrity(raw) != ORT_WEB_INTEGRITY:
        raise ExportError(f"{ORT_WEB} {ORT_WEB_VERSION} from the registry does not match its pinned integrity "
                             f"hash (got {integrity(raw)[:30]}..., want {ORT_WEB_INTEGRITY[:30]}...); not used")
    try:
        atomic_write(cached, raw)
    except OSError:
        pass  # a read-only cache folder: fetched again next time
    return raw


def ort_files(tarball: bytes) -> dict[str, bytes]:
    """The few files the page needs, out of the ~500 in the package."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return {name: tar.extractfile(f"package/dist/{name}").read() for name in ORT_FILES}


def model_info(model_path: Path) -> dict:
    """What the page shows about the model: from the ONNX file's metadata_props."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    acc = props.get("test_accuracy")
    return {"file": model_path.name, "kind": "int8" if "quantization" in props else "fp32",
            "test_accuracy": float(acc) if acc else None, "source_sha256": props.get("source_sha256"),
            "classes": json.loads(props.get("classes", "null")) or [str(d) for d in range(10)],
            "onnxruntime_web": ORT_WEB_VERSION}


def write_page(model_path: str | Path, out_dir: str | Path) -> dict:
    """The page, the model and onnxruntime-web's wasm build into out_dir (created; files there are replaced)."""
    model_path, out = Path(model_path), Path(out_dir)
    info = model_info(model_path)
    if info["classes"] != [str(d) for d in range(10)]:
        raise ExportError(f"--web: the page prepares digits the MNIST way (preprocess.js ports to_mnist); this "
                          f"model's classes are {', '.join(info['classes'][:4])}, ...")
    files = {f"ort/{name}": raw for name, raw in ort_files(ort_web_tarball()).items()}
    files.update({name: (PAGE / name).read_bytes() for name in PAGE_FILES})
    files["model.onnx"] = model_path.read_bytes()
    files["model.json"] = (json.dumps(info, indent=2) + "\n").encode()
    try:
        for name, raw in files.items():
            atomic_write(out / name, raw)
    except OSError as e:
        raise ExportError(f"cannot write the page into {out}: {e.strerror or e}") from None
    return {"dir": str(out), "files": sorted(files), "bytes": sum(map(len, files.values())),
            "onnxruntime_web": ORT_WEB_VERSION, **{k: info[k] for k in ("kind", "test_accuracy")}}

