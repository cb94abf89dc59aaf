"""`mnist-cnn`: argument parsing only. Each command is a thin call into the modules that own the work.

Every error a user can cause ends in one line on stderr and exit status 2 (argparse's own errors included);
Ctrl-C ends with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys

from mnist_cnn.errors import MnistCnnError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_data_dir(p):
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/ (default: ./data)")


def add_model_flags(p):
    """The seed's architecture hyperparameters; defaults are the seed's."""
    g = p.add_argument_group("model (defaults: the seed's network)")
    g.add_argument("--channels", type=int, nargs=2, default=[32, 64], metavar=("C1", "C2"))
    g.add_argument("--kernel-size", type=int, default=3)
    g.add_argument("--pool-kernel", type=int, default=2)
    g.add_argument("--pool-stride", type=int, default=2)
    g.add_argument("--fc-units", type=int, default=128)
    g.add_argument("--dropout", type=float, default=0.0)


def model_config(args):
    from mnist_cnn.model import ModelConfig

    return ModelConfig(channels=tuple(args.channels), kernel_size=args.kernel_size, pool_kernel=args.pool_kernel,
                       pool_stride=args.pool_stride, fc_units=args.fc_units, dropout=args.dropout)


def print_json(obj):
    print(json.dumps(obj, indent=2))


# -----------------------------------------------------------------------------
# train


def add_train(sub):
    p = sub.add_parser("train", help="train the CNN on MNIST and save a checkpoint")
    add_data_dir(p)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--seed", type=int, default=None, help="makes a CPU run repeatable")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast where the hardware has native bf16, else fp32")
    p.add_argument("--out", default="mnist_cnn_model.pth", help="checkpoint path (a .json is written beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print the run's metrics as JSON at the end")
    p.add_argument("--augment", action="store_true",
                   help="random rotation/shear/scale/shift and stroke weight per image: copes with real handwriting")
    add_model_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from mnist_cnn import checkpoint
    from mnist_cnn.train import TrainConfig, train, train_args

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      seed=args.seed, device=args.device, precision=args.precision, data_dir=args.data_dir,
                      out=args.out, quiet=args.quiet, model=model_config(args), augment=args.augment)
    quiet_log = args.quiet or args.json
    model, history = train(cfg, log=(lambda *a, **k: None) if quiet_log else print)
    checkpoint.save(cfg.out, model, train_args(cfg), history)
    if args.json:
        print_json({"checkpoint": cfg.out, "model": cfg.model.to_dict(), "history": history})
    elif not args.quiet:
        print(f"saved {cfg.out} (+ {checkpoint.meta_path(cfg.out).name}); "
              f"final test accuracy {100 * history[-1]['test_accuracy']:.2f}%")


# -----------------------------------------------------------------------------
# evaluate


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("--model", default="mnist_cnn_model.pth")
    add_data_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    from mnist_cnn import checkpoint
    from mnist_cnn.data import load_mnist
    from mnist_cnn.evaluate import evaluate, format_report

    model, _ = checkpoint.load(args.model)
    data = load_mnist(args.data_dir, quiet=args.json)
    ev = evaluate(model, data.test_images, data.test_labels)
    print_json({"model": args.model, **ev}) if args.json else print(format_report(ev))


# -----------------------------------------------------------------------------
# data


def add_data(sub):
    p = sub.add_parser("data", help="fetch (if needed) and verify the MNIST files; print where they are")
    add_data_dir(p)
    p.add_argument("--no-mirrors", action="store_true", help="skip the official mirrors; use the offline copy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data)


def cmd_data(args):
    from mnist_cnn import data

    d = data.ensure_mnist(args.data_dir, quiet=args.json, mirrors=not args.no_mirrors)
    files = {name: {"path": str(d / name), "md5": md5s[0], "status": "ok"} for name, md5s in data.FILES.items()}
    if args.json:
        print_json({"folder": str(d.resolve()), "files": files})
    else:
        print(f"MNIST verified in {d.resolve()}")
        for name in files:
            print(f"  {name}  md5 {data.FILES[name][0]}  ok")


# -----------------------------------------------------------------------------
# predict


def add_predict(sub):
    p = sub.add_parser("predict", help="classify your own digit images (any format, prepared the MNIST way)")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files or folders (walked); - reads stdin")
    p.add_argument("--model", default="mnist_cnn_model.pth")
    p.add_argument("--top-k", type=int, default=3, help="how many of the most probable digits to show (1-10)")
    p.add_argument("--json", action="store_true",
                   help='a list of {"file", "prediction", "probabilities", "error"}, one per image')
    p.add_argument("--save-input", metavar="DIR", help="write the 28x28 image the network saw, as PNG, into DIR")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args):
    from mnist_cnn.predict import Classifier, expand_inputs, save_input

    if not 1 <= args.top_k <= 10:
        raise MnistCnnError(f"--top-k must be between 1 and 10, got {args.top_k}")
    inputs = expand_inputs(args.files)  # [(name, path or bytes)], folders walked, - read from stdin
    clf = Classifier.load(args.model)
    results, saved = [], set()
    for name, source in inputs:
        try:
            p = clf.predict(source)
            if args.save_input:
                save_input(p.image28, args.save_input, name, saved)
        except MnistCnnError as e:
            msg = str(e) if str(e).startswith(name) else f"{name}: {e}"
            results.append({"file": name, "prediction": None, "probabilities": None, "error": msg})
            if not args.json:
                print(f"mnist-cnn predict: error: {msg}", file=sys.stderr)
            continue
        results.append({"file": name, "prediction": p.digit, "probabilities": p.probabilities, "error": None})
        if not args.json:
            top = ", ".join(f"{d} {100 * q:.1f}%" for d, q in p.top(args.top_k))
            print(f"{name}: {p.digit} ({100 * p.probabilities[p.digit]:.1f}%)  top-{args.top_k}: {top}")
    if args.json:
        print_json(results)
    failed = sum(r["error"] is not None for r in results)
    if failed:
        raise MnistCnnError(f"{failed} of {len(results)} images could not be read as a digit")


# -----------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="mnist-cnn", description=__doc__.splitlines()[0])
    from mnist_cnn import __version__

    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_train, add_evaluate, add_data, add_predict):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MnistCnnError as e:
        print(f"mnist-cnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mnist-cnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mnist-cnn ... | head`
        return 0
    return 0
