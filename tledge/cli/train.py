"""tledge train DATA_DIR [--backbone NAME] [--alpha A] [--weights imagenet|none|PATH] [--size N] [--grayscale]
[--epochs E] [--fine-tune-epochs F] [--unfreeze N | --fine-tune-at LAYER] [--batch B] [--lr LR]
[--augment/--no-augment] [--val DIR | --val-split F] [--class-weights auto] [--resume] [--out DIR]"""
from __future__ import annotations

import argparse
import sys


def _defaults():
    from tledge.train.config import TrainConfig

    return TrainConfig()


def add_arguments(p) -> None:
    d = _defaults()
    p.epilog = ("Writes OUT/model.keras and model.h5 (raw float32 pixels in, normalisation inside), labels.txt, "
                "tledge.json, metrics.json, curves.png, confusion.png, and checkpoints/ for --resume. GPUs train "
                "in mixed precision, several GPUs with MirroredStrategy; several machines: set TF_CONFIG on each "
                "and run the same command (MultiWorkerMirroredStrategy; worker 0 writes OUT).")
    p.add_argument("data", help="folder of class folders, or with train/ and val/ folders of class folders")
    p.add_argument("--backbone", default=d.backbone, help=f"keras.applications backbone (default {d.backbone})")
    p.add_argument("--alpha", type=float, help="width multiplier of MobileNet backbones (e.g. 0.25)")
    p.add_argument("--weights", default=d.weights,
                   help="imagenet (downloaded by Keras), none (random init) or a local no-top .h5 file")
    p.add_argument("--size", type=int, help="input height and width (default: the backbone's)")
    p.add_argument("--grayscale", action="store_true", help="1-channel model folded from the RGB weights")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"phase 1, frozen backbone (default {d.epochs})")
    p.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs,
                   help=f"phase 2, top layers unfrozen (default {d.fine_tune_epochs}; 0 skips it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--unfreeze", type=int, help="phase 2 trains the top N backbone layers (default 30%% of them)")
    g.add_argument("--fine-tune-at", help="phase 2 trains from this backbone layer (name or index) up")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size per replica: GPU or worker (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"phase 1 learning rate (default {d.lr:g})")
    p.add_argument("--fine-tune-lr", type=float, help="phase 2 learning rate (default LR/300)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="flips, small shifts, brightness in training (default on; --no-augment trains the head "
                        "on features computed once: much faster)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--val", help="validation folder of class folders")
    v.add_argument("--val-split", type=float, help="fraction of each class held out (default 0.2 without val/)")
    p.add_argument("--class-weights", choices=("none", "auto"), default="none",
                   help="auto: weigh classes by inverse frequency (imbalanced folders)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--out", default=str(d.out), help=f"output folder (default {d.out})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"early stopping: epochs without a better epoch (a higher val accuracy, or the same and a "
                        f"lower val loss) (default {d.patience}; 0 = off, "
                        "and with it the --fine-tune-max-drop guard: every epoch runs)")
    p.add_argument("--fine-tune-max-drop", type=float, default=d.fine_tune_max_drop,
                   help="stop fine-tuning when val accuracy falls this much under the best head epoch "
                        f"(default {d.fine_tune_max_drop}; at least one val image; off with --patience 0)")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"before the classifier (default {d.dropout})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--precision", choices=("auto", "float32", "mixed"), default="auto",
                   help="auto: mixed_float16 on GPUs, float32 on CPU")
    p.add_argument("--json", action="store_true",
                   help="print the run's metrics (metrics.json) and files as JSON on stdout; progress goes to stderr")


def _config(args):
    from tledge.train.config import TrainConfig

    return TrainConfig(
        backbone=args.backbone, alpha=args.alpha, weights=args.weights, size=args.size, grayscale=args.grayscale,
        epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, unfreeze=args.unfreeze,
        fine_tune_at=args.fine_tune_at, batch=args.batch, lr=args.lr, fine_tune_lr=args.fine_tune_lr,
        augment=args.augment, val_dir=args.val, val_split=args.val_split, class_weights=args.class_weights,
        resume=args.resume, out=args.out, patience=args.patience,
        fine_tune_max_drop=args.fine_tune_max_drop, dropout=args.dropout, seed=args.seed,
        precision=args.precision, verbose=0 if args.quiet else 1)  # -q: no per-epoch lines


def _validate(args) -> None:
    """Paths and sizes before TensorFlow is imported (TrainConfig checks the rest)."""
    from tledge.cli import validate as V

    V.input_dir(args.data, "DATA_DIR")
    if args.val:
        V.input_dir(args.val, "--val")
    if args.weights not in ("imagenet", "none"):
        V.keras_weights(args.weights, "--weights", suffixes=(".h5", ".weights.h5", ".keras"))
    V.output_dir(args.out, "--out")
    from tledge.train.api import check_out

    check_out(args.out, args.data, args.val)  # before train.log is opened in it
    V.in_range(args.size, "--size", 8, V.MAX_SIDE)
    V.in_range(args.batch, "--batch", 1, 65536)
    V.in_range(args.epochs, "--epochs", 0, 100_000)
    V.in_range(args.fine_tune_epochs, "--fine-tune-epochs", 0, 100_000)
    V.in_range(args.fine_tune_max_drop, "--fine-tune-max-drop", 0, 1)
    V.in_range(args.lr, "--lr", 0, 10, lo_open=True)  # NaN and inf too (inf trained on NaN losses)
    V.in_range(args.fine_tune_lr, "--fine-tune-lr", 0, 10, lo_open=True)
    V.in_range(args.alpha, "--alpha", 0, 4, lo_open=True)
    V.in_range(args.seed, "--seed", 0, 2**32 - 1)  # TensorFlow's range: a traceback after loading it otherwise
    from tledge import backbones

    least = backbones.get(args.backbone).min_size
    if args.size is not None and args.size < least:
        from tledge.errors import TledgeError

        raise TledgeError(f"--size {args.size}: {args.backbone} takes inputs of at least {least}x{least}")
    from tledge.train.distributed import tf_config

    if tf_config():  # a TF_CONFIG TensorFlow would refuse with a traceback, refused in one line before it loads
        from tledge.train.hardware import cluster_timeout

        cluster_timeout()
    if args.alpha is not None:
        from tledge.errors import TledgeError

        if not backbones.get(args.backbone).takes_alpha:  # it was ignored, and training went on
            raise TledgeError(f"--alpha is the width multiplier of MobileNet backbones; {args.backbone} has "
                              "none (drop --alpha)")


def run(args) -> int:
    import contextlib
    import json

    from tledge import log

    _validate(args)
    cfg = _config(args)
    from tledge.train.hardware import is_chief

    if is_chief():  # TensorFlow's own messages (shown with -v); the other workers of a cluster write nothing to OUT
        log.keep_log(f"{args.out}/train.log", append=bool(args.resume))  # a resumed run's log after the run's own
    from tledge.train import train

    # train() says its notes and epoch lines on stderr (tledge.log); anything else it prints goes there too
    # with --json, so that stdout is the JSON document alone
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = train(args.data, cfg)
    m = result.metrics
    if args.json:
        from tledge.safejson import finite

        print(json.dumps(finite({"out": str(result.out), "files": m["files"], **{k: v for k, v in m.items()
                                                                                 if k != "files"}}),
                         indent=2, default=str, allow_nan=False))
        return 0
    print(f"val accuracy {result.val_accuracy:.3f} on {m['val_images']} images, {m['wall_time_s']:.0f}s")
    if m["files"]:  # a non-chief worker of a multi-worker run writes nothing
        shown = [f"{name}/ (links to the training and held-out images, for export)" if kind == "split" else name
                 for kind, name in m["files"].items()]
        print(f"files in {result.out}/: {', '.join(shown)}")
    return 0
