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
    add_speed_flags(p)
    add_model_flags(p)
    p.set_defaults(func=cmd_train)


def add_speed_flags(p):
    """Recipes and time-to-accuracy (mnist_cnn.train.RECIPES); defaults are the seed's recipe."""
    g = p.add_argument_group("speed (see docs/performance.md)")
    g.add_argument("--recipe", choices=["seed", "fast"], default="seed",
                   help="seed: the seed's recipe (default); fast: reach 99.0%% test accuracy soonest "
                        "(1 epoch, batch 64, one-cycle Adam 6e-3, label smoothing 0.1, stop at 99.0%%)")
    g.add_argument("--target-accuracy", type=float, default=None, metavar="PCT",
                   help="stop as soon as the test accuracy reaches PCT (checked each epoch, and every "
                        "--eval-every steps in the second half of the run)")
    g.add_argument("--eval-every", type=int, default=0, metavar="STEPS")
    g.add_argument("--schedule", choices=["constant", "onecycle"], default="constant")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: auto, fewer when the machine is busy)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (measured slower on CPU)")


def speed_config(args) -> dict:
    return dict(recipe=args.recipe, target_accuracy=args.target_accuracy, eval_every=args.eval_every,
                schedule=args.schedule, label_smoothing=args.label_smoothing, threads=args.threads,
                compile=args.compile)


def cmd_train(args):
    from mnist_cnn import checkpoint
    from mnist_cnn.train import TrainConfig, apply_recipe, train, train_args

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      seed=args.seed, device=args.device, precision=args.precision, data_dir=args.data_dir,
                      out=args.out, quiet=args.quiet, model=model_config(args), **speed_config(args))
    cfg.validate()
    cfg = apply_recipe(cfg)
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
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 where the hardware has native bf16 (agrees with fp32 to ~0.01%%)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    import torch

    from mnist_cnn import checkpoint
    from mnist_cnn.data import load_mnist
    from mnist_cnn.evaluate import evaluate, format_report
    from mnist_cnn.train import pick_dtype

    model, _ = checkpoint.load(args.model)
    data = load_mnist(args.data_dir, quiet=args.json)
    model = model.to(memory_format=torch.channels_last)
    ev = evaluate(model, data.test_images, data.test_labels, batch_size=1024,
                  dtype=pick_dtype(args.precision, next(model.parameters()).device))
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
# bench


def add_bench(sub):
    p = sub.add_parser("bench", help="time the seed's pipeline and ours side by side (table of ratios)")
    add_data_dir(p)
    p.add_argument("--epochs", type=int, default=5, help="epochs for the reference and the seed recipe")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--repeats", type=int, default=1, help="run each side N times; report the medians")
    p.add_argument("--target", type=float, default=99.0, metavar="PCT", help="the accuracy to time (percent)")
    p.add_argument("--sides", nargs="+", choices=["reference", "seed", "fast"], default=["reference", "seed", "fast"])
    p.add_argument("--quick", action="store_true",
                   help="tiny budget (20 batches per epoch, 1,280 test images): checks the plumbing, not speed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from mnist_cnn.bench import bench, format_table
    from mnist_cnn.errors import ConfigError
    from mnist_cnn.train import pick_device

    if args.epochs < 1 or args.repeats < 1:
        raise ConfigError("--epochs and --repeats must be at least 1")
    if not 0 < args.target <= 100:
        raise ConfigError(f"--target is a percentage in (0, 100], got {args.target}")
    pick_device(args.device)  # a missing CUDA/MPS is a one-line error here, not in a child
    res = bench(args, log=(lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr)))
    print_json(res) if args.json else print(format_table(res))


# -----------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="mnist-cnn", description=__doc__.splitlines()[0])
    from mnist_cnn import __version__

    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_train, add_evaluate, add_data, add_bench):
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
