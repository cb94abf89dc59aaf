"""`mnist-cnn`: argument parsing only. Each command is a thin call into the modules that own the work.

Every error a user can cause ends in one line on stderr and exit status 2 (argparse's own errors included);
Ctrl-C ends with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import typing

from mnist_cnn.config import BENCH_SIDES, CONCEPT_TOPICS, DATASET_HELP, DATASETS, STUDY_GROUPS, ModelConfig, TrainConfig
from mnist_cnn.errors import MnistCnnError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -----------------------------------------------------------------------------
# flags generated from the config dataclasses (config.py), where every default and help text is written once


@functools.cache
def type_hints(cls) -> dict:  # the field annotations, evaluated (compiling each one: ~3 ms a class, so once)
    return typing.get_type_hints(cls)


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def help_of(f: dataclasses.Field) -> str:
    d = default_of(f)
    shown = " ".join(map(str, d)) if isinstance(d, tuple) else d
    return f.metadata.get("help", "") + ("" if d is None or isinstance(d, bool) else f" (default: {shown})")


def flag_kind(kind, f: dataclasses.Field) -> dict:
    """argparse's type, nargs or action for a field's annotation: bool, int, float, str, X | None, tuple[X, X],
    list[X]."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None: the flag takes an X
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction if default_of(f) else "store_true"}
    extra = {k: f.metadata[k] for k in ("choices", "metavar") if f.metadata.get(k)}
    if not extra:
        extra["metavar"] = f.name.upper()
    if typing.get_origin(kind) is tuple:
        return {"type": typing.get_args(kind)[0], "nargs": len(typing.get_args(kind)), **extra}
    if typing.get_origin(kind) is list:
        return {"type": typing.get_args(kind)[0], "nargs": "+", **extra}
    return {"type": kind, **extra}


def add_config_flags(p, cls, prefix: str = "", groups: dict | None = None):
    """--name-with-dashes for every field of the dataclass `cls`, nested dataclasses' fields too ("model.").
    The default is argparse.SUPPRESS: a flag not given leaves nothing in args, so "given" is known
    (given_flags), and the dataclass supplies the real default."""
    groups = {} if groups is None else groups
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            add_config_flags(p, hints[f.name], f"{prefix}{f.name}.", groups)
            continue
        group = f.metadata.get("group")
        if group is not None and group not in groups:
            groups[group] = p.add_argument_group(group)
        groups.get(group, p).add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg.{prefix}{f.name}",
                                          default=argparse.SUPPRESS, help=help_of(f), **flag_kind(hints[f.name], f))


def given_flags(args) -> dict:
    """The config flags on the command line: {"lr": 0.001, "model.channels": [8, 16], ...}."""
    return {k.removeprefix("cfg."): v for k, v in vars(args).items() if k.startswith("cfg.")}


def build(cls, given: dict, prefix: str = ""):
    """cls(...) from the given flags, every other field at its default; nested dataclasses likewise."""
    hints, kw = type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and f.metadata.get("flag", True):
            kw[f.name] = build(hints[f.name], given, f"{prefix}{f.name}.")
        elif prefix + f.name in given:
            kw[f.name] = given[prefix + f.name]
    return cls(**kw)


def add_setting(p, name: str, cls=TrainConfig, **override):
    """One config field's flag on a command other than `train` (evaluate's --precision, ...), with a plain
    default taken from the dataclass."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    kw = {"default": default_of(f), "help": help_of(f), **flag_kind(type_hints(cls)[name], f)}
    p.add_argument(f"--{name.replace('_', '-')}", **{**kw, **override})


def add_data_dir(p):
    add_setting(p, "data_dir")


def add_dataset(p, for_checkpoint: bool = False):
    """--dataset: a known name or your own folder (data.py). For a command that scores a checkpoint the default
    is the dataset the checkpoint was trained on, and another one is refused."""
    if for_checkpoint:
        add_setting(p, "dataset", default=None, help=f"{DATASET_HELP} (default: the checkpoint's own dataset)")
    else:
        add_setting(p, "dataset")


CHECKPOINT = TrainConfig.out  # what `train` writes by default, so what the other commands read by default


def print_json(obj):
    print(json.dumps(obj, indent=2))


# -----------------------------------------------------------------------------
# train


def add_train(sub):
    p = sub.add_parser("train", help="train the CNN on MNIST (or --dataset) and save a checkpoint")
    add_config_flags(p, TrainConfig)  # every TrainConfig and ModelConfig field
    p.add_argument("--json", action="store_true", help="print the run's metrics as JSON at the end")
    p.set_defaults(func=cmd_train)


def train_config(args) -> TrainConfig:
    """The flags given, every other setting at its default, and which ones were given (for recipes, resume)."""
    given = given_flags(args)
    return dataclasses.replace(build(TrainConfig, given), save=True, given=frozenset(given))


def cmd_train(args):
    from mnist_cnn import checkpoint
    from mnist_cnn.distributed import env_world
    from mnist_cnn.train import train

    cfg = train_config(args)
    quiet_log = cfg.quiet or args.json
    model, history = train(cfg, log=(lambda *a, **k: None) if quiet_log else print)  # saves after every epoch
    if not env_world().main:  # under torchrun only rank 0 speaks
        return
    if args.json:
        print_json({"checkpoint": cfg.out, "model": model.cfg.to_dict(), "history": history})
    elif not cfg.quiet:
        print(f"saved {cfg.out} (+ {checkpoint.meta_path(cfg.out).name}); "
              f"final test accuracy {100 * history[-1]['test_accuracy']:.2f}%")


# -----------------------------------------------------------------------------
# evaluate


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("--model", default=CHECKPOINT)
    add_data_dir(p)
    add_dataset(p, for_checkpoint=True)
    add_setting(p, "precision", help="auto: bf16 where the hardware has native bf16 (agrees with fp32 to ~0.01%%)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    import torch

    from mnist_cnn import checkpoint
    from mnist_cnn.evaluate import evaluate, format_report
    from mnist_cnn.train import pick_dtype

    model, meta = checkpoint.load(args.model)
    data = checkpoint.load_data(meta, args.model, args.dataset, args.data_dir, quiet=args.json)
    model = model.to(memory_format=torch.channels_last)
    ev = evaluate(model, data.test_images, data.test_labels, batch_size=1024,
                  dtype=pick_dtype(args.precision, next(model.parameters()).device))
    names = list(data.classes)
    print_json({"model": args.model, "dataset": data.name, "classes": names, **ev}) if args.json \
        else print(format_report(ev, names))


# -----------------------------------------------------------------------------
# data


def add_data(sub):
    p = sub.add_parser("data", help="fetch (if needed) and verify the MNIST files; print where they are")
    add_data_dir(p)
    add_setting(p, "dataset", choices=DATASETS, metavar=None, help="which known dataset (default: mnist)")
    p.add_argument("--no-mirrors", action="store_true", help="skip the official mirrors; use the offline copy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data)


def cmd_data(args):
    from mnist_cnn import data

    source = data.SOURCES[args.dataset]
    d = data.ensure(source, args.data_dir, quiet=args.json, mirrors=not args.no_mirrors)
    def checked(name):  # the file whose MD5 is checked: the raw file, else the .gz or the zip as served
        path = data.on_disk(d, name, source)[0 if source.files[name][0] or source.archive else 1]
        return path, source.files[name][0] or (source.archive.md5 if source.archive else source.files[name][1])

    files = {name: {"path": str(checked(name)[0]), "md5": checked(name)[1], "status": "ok"} for name in source.files}
    if args.json:
        print_json({"dataset": source.name, "folder": str(d.resolve()), "files": files})
    else:
        print(f"{'MNIST' if source.name == 'mnist' else source.name} verified in {d.resolve()}")
        for name, f in files.items():
            of = "" if source.files[name][0] else f" (of {f['path'].rsplit('/', 1)[-1]})"
            print(f"  {name}  md5 {f['md5']}{of}  ok")


# -----------------------------------------------------------------------------
# serve


def add_serve(sub):
    from dataclasses import fields

    from mnist_cnn.serve.limits import Limits

    p = sub.add_parser("serve", help="the web page: draw a digit, watch the network think (and a JSON API)")
    p.add_argument("--model", default=CHECKPOINT)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    add_data_dir(p)
    add_dataset(p, for_checkpoint=True)
    p.add_argument("--threads", type=int, default=1,
                   help="threads for the forward pass (default 1: one image is too small to split)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes serving the same port, each with its own model (default 1; docs/serve.md)")
    add_backend_flag(p)
    g = p.add_argument_group("limits (what one client can cost; docs/serve.md)")
    for f in fields(Limits):
        g.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default:,})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args):
    import ipaddress
    import logging
    import socket
    from dataclasses import fields

    from mnist_cnn.predict.backend import backend_name, load_backend
    from mnist_cnn.serve import server
    from mnist_cnn.serve.app import create_app
    from mnist_cnn.serve.limits import LOOPBACK_NAMES, Limits

    if args.threads < 1:
        raise MnistCnnError(f"--threads must be at least 1, got {args.threads}")
    if not 1 <= args.workers <= 64:
        raise MnistCnnError(f"--workers must be in 1..64, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise MnistCnnError(f"--port must be in 0..65535, got {args.port}")
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    if backend_name(args.model, args.backend) == "torch":  # onnxruntime: threads per session, torch never imported
        import torch

        torch.set_num_threads(args.threads)
    backend = load_backend(args.model, args.backend, threads=args.threads)  # a bad model: one line, before binding
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # bind here, so a busy port or bad host is one line too, not uvicorn's traceback
        info = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as e:
        raise MnistCnnError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = sock.getsockname()[:2]
    loopback = ipaddress.ip_address(host).is_loopback
    # loads the model and the test set once, now: a bad --model is one line; loopback answers only to its names
    hosts = (*LOOPBACK_NAMES, host) if loopback else None
    app = create_app(args.model, args.data_dir, args.dataset, limits, local_hosts=hosts, backend=backend)
    if missing := app.state.samples.missing:
        print(f"note: {missing}; /api/sample answers 503", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {args.model} on http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", flush=True)
    if not loopback:
        print(f"note: listening on {host}, reachable from other machines; the app has no authentication",
              file=sys.stderr)
    if args.workers == 1:
        return server.run(app, sock, limits)

    def worker_app():  # in each worker, after the fork: its own model, engine thread and decoders
        return create_app(args.model, args.data_dir, args.dataset, limits, local_hosts=hosts,
                          backend=load_backend(args.model, args.backend, threads=args.threads))

    del app, backend  # built to check everything before any worker starts; the workers build their own
    server.run_workers(worker_app, sock, limits, args.workers)  # ends the process: 0, or a failed worker's status


# -----------------------------------------------------------------------------
# summary


def add_summary(sub):
    p = sub.add_parser("summary", help="per-layer shapes, formulas, parameters, MACs, receptive fields")
    p.add_argument("--model", default=None, help="read the architecture from this checkpoint instead of the flags")
    p.add_argument("--json", action="store_true")
    add_config_flags(p, ModelConfig, "model.")
    p.set_defaults(func=cmd_summary)


def cmd_summary(args):
    from mnist_cnn import checkpoint
    from mnist_cnn.insight.explain import format_summary, summary

    cfg = checkpoint.load(args.model)[0].cfg if args.model else build(ModelConfig, given_flags(args), "model.")
    s = summary(cfg)
    print_json(s) if args.json else print(format_summary(s))


# -----------------------------------------------------------------------------
# explain


def add_explain(sub):
    p = sub.add_parser("explain", help="one figure of every layer's output, the softmax and a saliency map")
    p.add_argument("image", nargs="?", help="an image file (PNG, JPG, ...) of a digit")
    p.add_argument("--test-index", type=int, default=None,
                   help="use test image N of the checkpoint's dataset (or --dataset) instead of a file")
    p.add_argument("--model", default=CHECKPOINT)
    p.add_argument("--out", default="explain.png", help="figure path (PNG)")
    p.add_argument("--filters", action="store_true", help="also draw the learned conv1/conv2 kernels "
                   "(to OUT with _filters before the suffix)")
    add_data_dir(p)
    add_dataset(p, for_checkpoint=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args):
    from pathlib import Path

    from mnist_cnn import checkpoint
    from mnist_cnn.errors import MnistCnnError
    from mnist_cnn.insight.explain import figure_explain, figure_filters

    if (args.image is None) == (args.test_index is None):
        raise MnistCnnError("give exactly one of IMAGE or --test-index N")
    model, meta = checkpoint.load(args.model)
    names = checkpoint.class_names(meta, model.cfg.num_classes)
    label = None
    if args.test_index is not None:
        from mnist_cnn.data import normalize

        data = checkpoint.load_data(meta, args.model, args.dataset, args.data_dir, quiet=args.json)
        n = data.test_images.shape[0]
        if not 0 <= args.test_index < n:
            raise MnistCnnError(f"--test-index must be in 0..{n - 1}, got {args.test_index}")
        x = normalize(data.test_images[args.test_index:args.test_index + 1], model.cfg.mean, model.cfg.std)
        label = int(data.test_labels[args.test_index])
        caption = f"{'MNIST' if data.name == 'mnist' else data.name} test image {args.test_index}"
    else:
        try:
            from mnist_cnn.predict.classifier import prepare
            from mnist_cnn.predict.preprocess import normalize_image
        except ImportError:
            raise MnistCnnError("explaining an image file needs Pillow (mnist_cnn.predict.preprocess); "
                                "use --test-index N") from None
        image28 = prepare(args.image, names, model.cfg.mean, model.cfg.std)  # uint8 (28, 28)
        x, caption = normalize_image(image28, model.cfg.mean, model.cfg.std), Path(args.image).name  # (1, 28, 28)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise MnistCnnError(f"--out {out}: folder {out.parent} does not exist")
    result = figure_explain(model, x, str(out), caption, label, names)
    if args.filters:
        result["filters_figure"] = str(out.with_name(out.stem + "_filters.png"))
        figure_filters(model, result["filters_figure"])
    if args.json:
        print_json(result)
    else:
        top = sorted(range(len(result["probabilities"])), key=lambda c: -result["probabilities"][c])[:3]
        print(f"{caption}: predicted {names[result['prediction']]} "
              + ", ".join(f"p({names[c]}) = {result['probabilities'][c]:.4f}" for c in top)
              + ("" if label is None else f"; true label {names[label]}"))
        print(f"wrote {out}" + (f" and {result['filters_figure']}" if args.filters else ""))


# -----------------------------------------------------------------------------
# concepts


def add_concepts(sub):
    p = sub.add_parser("concepts", help="the tutorial's worked examples (softmax, backprop, ...) , checked")
    p.add_argument("topic", nargs="?", choices=CONCEPT_TOPICS, metavar="TOPIC",
                   help="one of: " + ", ".join(CONCEPT_TOPICS) + " (default: all)")
    p.add_argument("--model", default=CHECKPOINT, help="for output_size: compare with this model")
    add_data_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_concepts)


def cmd_concepts(args):
    from mnist_cnn.insight.concepts import Context, format_concept, run

    results = run(args.topic, Context(data_dir=args.data_dir, model=args.model))
    if args.json:
        print_json(results)
    else:
        print("\n\n".join(format_concept(c) for c in results))


# -----------------------------------------------------------------------------
# report


def add_report(sub):
    p = sub.add_parser("report", help="confusion matrix, per-class accuracy, mistakes gallery, training curves")
    p.add_argument("--model", default=CHECKPOINT)
    p.add_argument("--out", default="report", help="folder for the PNGs, report.txt and report.json")
    add_data_dir(p)
    add_dataset(p, for_checkpoint=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args):
    from pathlib import Path

    from mnist_cnn import checkpoint
    from mnist_cnn.errors import MnistCnnError
    from mnist_cnn.insight.report import report

    model, meta = checkpoint.load(args.model)
    data = checkpoint.load_data(meta, args.model, args.dataset, args.data_dir, quiet=args.json)
    try:
        r = report(model, meta, data, args.out, title=Path(args.model).name)
    except OSError as e:
        raise MnistCnnError(f"--out {args.out}: cannot write there ({e.strerror})") from None
    if args.json:
        r.pop("text")
        print_json(r)
    else:
        print(r["text"])
        print("\nwrote " + ", ".join(r["files"].values()))


# -----------------------------------------------------------------------------
# study


def add_study(sub):
    p = sub.add_parser("study", help="measure the tutorial's hyperparameter choices: params, MACs, speed, accuracy")
    p.add_argument("--quick", action="store_true",
                   help="1 epoch on 6,000 training images, 1 seed (a minute or two on 2 cores)")
    p.add_argument("--seeds", type=int, default=None, help="runs per variant (default 3; --quick: 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 3; --quick: 1)")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images (default all; "
                   "--quick: 6000)")
    p.add_argument("--test-subset", type=int, default=None, help="test on the first N test images (default all)")
    p.add_argument("--groups", nargs="+", default=list(STUDY_GROUPS), choices=STUDY_GROUPS, metavar="GROUP",
                   help=f"any of: {' '.join(STUDY_GROUPS)} (default: all)")
    add_setting(p, "device")
    p.add_argument("--out", default="study", help="folder for study.md, study.json, study.png")
    add_setting(p, "log_dir", help="TensorBoard event files, one run per variant and seed: "
                                   "DIR/<group>-<variant>/seed<k> (tensorboard --logdir DIR)")
    add_data_dir(p)
    add_dataset(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_study)


def cmd_study(args):
    from mnist_cnn.data import load_dataset
    from mnist_cnn.insight import study

    q = args.quick
    seeds = args.seeds if args.seeds is not None else (1 if q else 3)
    epochs = args.epochs if args.epochs is not None else (1 if q else 3)
    train_subset = args.train_subset if args.train_subset is not None else (6000 if q else None)
    data = load_dataset(args.dataset, args.data_dir, quiet=args.json)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    result = study.run(data, args.groups, seeds, epochs, train_subset, args.test_subset, args.device, log,
                       args.log_dir)
    result["files"] = study.write(result, args.out)
    if args.json:
        print_json(result)
    else:
        print(study.markdown(result))
        print("\nwrote " + ", ".join(result["files"].values()))


# -----------------------------------------------------------------------------
# bench


def add_bench(sub):
    p = sub.add_parser("bench", help="time the tutorial's pipeline and ours side by side (table of ratios)")
    add_data_dir(p)
    add_setting(p, "epochs", help="epochs for the reference and the tutorial recipe (default: %(default)s)")
    add_setting(p, "device")
    p.add_argument("--repeats", type=int, default=1, help="run each side N times; report the medians")
    p.add_argument("--target", type=float, default=99.0, metavar="PCT", help="the accuracy to time (percent)")
    p.add_argument("--sides", nargs="+", choices=BENCH_SIDES, default=list(BENCH_SIDES))
    p.add_argument("--quick", action="store_true",
                   help="tiny budget (20 batches per epoch, 1,280 test images): checks the plumbing, not speed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", metavar="PATH", help="also write the raw figures, with machine, date, versions and "
                   "command, as JSON to PATH (a folder: a file named by date and machine; see bench/results/)")
    add_dataset(p)
    add_setting(p, "log_dir", help="TensorBoard event files, one run per side: DIR/<side> (tensorboard --logdir DIR)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from mnist_cnn.errors import ConfigError
    from mnist_cnn.perf.bench import bench, format_table
    from mnist_cnn.train import pick_device

    if args.epochs < 1 or args.repeats < 1:
        raise ConfigError("--epochs and --repeats must be at least 1")
    if not 0 < args.target <= 100:
        raise ConfigError(f"--target is a percentage in (0, 100], got {args.target}")
    pick_device(args.device)  # a missing CUDA/MPS is a one-line error here, not in a child
    if args.log_dir:
        from mnist_cnn.runlog import check

        check(args.log_dir)  # tensorboard missing, or the folder unwritable: one line now, not after the runs
    res = bench(args, log=(lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr)))
    if args.log_dir:
        from mnist_cnn.runlog import write_bench

        write_bench(args.log_dir, res)
    print_json(res) if args.json else print(format_table(res))
    if args.results:
        from mnist_cnn.perf.results import write_results

        path = write_results(args.results, "bench", res, n=args.repeats,
                             n_is="runs of each side (every figure is their median)")
        print(f"wrote {path}", file=sys.stderr)


# -----------------------------------------------------------------------------
# export


def add_export(sub):
    from mnist_cnn.ship.quantize import CALIBRATION_BATCH, CALIBRATION_BATCHES  # numpy only: no torch to parse

    p = sub.add_parser("export", help="write the model as ONNX (checked against PyTorch), int8, or a static web page")
    p.add_argument("model", metavar="MODEL", help="a checkpoint (.pth with its .json)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", metavar="FILE", help="the ONNX file (default: MODEL with .onnx)")
    p.add_argument("--quantize", action="store_true",
                   help="also write FILE's int8 version, <stem>.int8.onnx (static, calibrated on training images)")
    p.add_argument("--calibration-batches", type=int, default=CALIBRATION_BATCHES, metavar="N",
                   help=f"batches of {CALIBRATION_BATCH} training images for --quantize's calibration "
                        f"(default {CALIBRATION_BATCHES})")
    p.add_argument("--web", metavar="DIR",
                   help="also write a static page into DIR that runs the model (int8 with --quantize) in the browser")
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print what was written and checked as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from pathlib import Path

    from mnist_cnn.ship import export

    out = Path(args.out or Path(args.model).with_suffix(".onnx"))
    report = {"onnx": export.export_onnx(args.model, out, args.data_dir)}
    r = report["onnx"]
    if not args.json:
        print(f"wrote {out} ({r['bytes'] / 1e6:.2f} MB, opset {r['opset']}): test accuracy "
              f"{100 * r['onnx_accuracy']:.2f}% (PyTorch {100 * r['torch_accuracy']:.2f}%); max |logit "
              f"difference| {r['max_abs_logit_diff']:.1e} on {r['images']:,} test images, same digit on all")
    if args.quantize:
        from mnist_cnn.ship import quantize

        if args.calibration_batches < 1:
            raise MnistCnnError(f"--calibration-batches must be at least 1, got {args.calibration_batches}")
        q = report["int8"] = quantize.quantize(out, out.with_suffix(".int8.onnx"), args.data_dir,
                                               args.calibration_batches)
        if not args.json:
            print(f"wrote {q['path']} ({q['bytes'] / 1e6:.2f} MB, int8): test accuracy {100 * q['test_accuracy']:.2f}%"
                  f" (fp32 {100 * q['fp32_test_accuracy']:.2f}%), calibrated on {q['calibration_images']:,} "
                  f"training images")
    if args.web:
        from mnist_cnn.ship import web

        report["web"] = web.write_page(report.get("int8", r)["path"], args.web)
        if not args.json:
            print(f"wrote {args.web}/ (index.html, the model, onnxruntime-web {report['web']['onnxruntime_web']}): "
                  f"serve it with any static file server, e.g. python -m http.server -d {args.web}")
    if args.json:
        print_json(report)


# -----------------------------------------------------------------------------
# predict


def add_predict(sub):
    p = sub.add_parser("predict", help="classify your own digit images (any format, prepared the MNIST way)")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files or folders (walked); - reads stdin")
    p.add_argument("--model", default=CHECKPOINT)
    p.add_argument("--top-k", type=int, default=3, help="how many of the most probable classes to show (1-10)")
    p.add_argument("--json", action="store_true",
                   help='a list of {"file", "prediction", "label" (the class name), "best_guess", "is_digit", '
                        '"confidence", "probabilities", "number", "digits", "error"}, one per image')
    p.add_argument("--save-input", metavar="DIR", help="write the 28x28 image the network saw, as PNG, into DIR")
    add_backend_flag(p)
    p.set_defaults(func=cmd_predict)


NO_READING = ("prediction", "label", "best_guess", "is_digit", "confidence", "probabilities", "number", "digits")


def describe(p, top_k: int, classes) -> str:
    """One line for `predict`: the digit, the number, or plainly that it does not look like a digit."""
    if p.is_number:
        digits = ", ".join(f"{d.digit} {100 * d.confidence:.1f}%" + (" (not a digit)" if d.is_digit is False else "")
                           for d in p.digits)
        read = "".join("?" if d.is_digit is False else str(d.digit) for d in p.digits)
        return f"number {read} ({len(p.digits)} digits: {digits})"
    top = ", ".join(f"{classes[d]} {100 * q:.1f}%" for d, q in p.top(top_k))
    if p.is_digit is False:
        return (f"does not look like a digit (best guess {p.label}, {100 * p.confidence:.1f}%, under the "
                f"threshold)  top-{top_k}: {top}")
    return f"{p.label} ({100 * p.confidence:.1f}%)  top-{top_k}: {top}"


def add_backend_flag(p):
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                   help="what runs the model (default: onnxruntime for a .onnx MODEL, else torch); onnxruntime "
                        "needs no torch installed")


def cmd_predict(args):
    from mnist_cnn.predict.classifier import Classifier, expand_inputs, save_input

    if not 1 <= args.top_k <= 10:
        raise MnistCnnError(f"--top-k must be between 1 and 10, got {args.top_k}")
    inputs = expand_inputs(args.files)  # [(name, path or bytes)], folders walked, - read from stdin
    clf = Classifier.load(args.model, backend=args.backend)
    results, saved = [], set()
    for name, source in inputs:
        try:
            p = clf.predict(source)
            if args.save_input:
                save_input(p.image28, args.save_input, name, saved)
        except MnistCnnError as e:
            msg = str(e) if str(e).startswith(name) else f"{name}: {e}"
            results.append({"file": name, **dict.fromkeys(NO_READING), "error": msg})
            if not args.json:
                print(f"mnist-cnn predict: error: {msg}", file=sys.stderr)
            continue
        results.append({"file": name, **p.to_json(), "error": None})
        if not args.json:
            print(f"{name}: {describe(p, args.top_k, clf.classes)}")
    if args.json:
        print_json(results)
    elif not clf.trust["calibrated"] and any(r["error"] is None for r in results):
        print(f"note: {clf.trust['note']}", file=sys.stderr)
    failed = sum(r["error"] is not None for r in results)
    if failed:
        raise MnistCnnError(f"{failed} of {len(results)} images could not be read as a digit")


# -----------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="mnist-cnn", description="Train, run and look inside the tutorial's MNIST CNN.")
    from mnist_cnn import __version__

    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_train, add_evaluate, add_data, add_predict, add_summary, add_explain, add_concepts, add_report,
                add_study, add_serve, add_bench, add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from mnist_cnn import GOMP_SPINCOUNT

    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)  # process-level, so here and not on import: before torch
    args = build_parser().parse_args(argv)

    speak = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports errors
    try:
        args.func(args)
    except MnistCnnError as e:
        if speak:
            print(f"mnist-cnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # resume.Interrupted carries the line saying how to resume, and 128 + signal
        if speak:
            print(f"mnist-cnn {args.command}: {getattr(e, 'message', 'interrupted')}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:  # `mnist-cnn ... | head`
        return 0
    return 0
