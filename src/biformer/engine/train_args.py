"""The command line of ``biformer train``: every flag, and which recipe field each one sets."""

from __future__ import annotations

import argparse

__all__ = ["RECIPE_FLAGS", "add_arguments"]

# Recipe fields settable from the command line: flag dest -> Recipe field.
RECIPE_FLAGS = {
    "model": "model", "img_size": "img_size", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "lr", "lr_base": "lr_base", "lr_base_size": "lr_base_size", "opt": "opt",
    "opt_eps": "opt_eps", "momentum": "momentum", "weight_decay": "weight_decay",
    "sched": "sched", "warmup_epochs": "warmup_epochs", "warmup_lr": "warmup_lr",
    "min_lr": "min_lr", "smoothing": "smoothing", "mixup": "mixup", "cutmix": "cutmix",
    "mixup_prob": "mixup_prob", "mixup_switch_prob": "mixup_switch_prob",
    "mixup_mode": "mixup_mode", "aa": "aa", "color_jitter": "color_jitter", "reprob": "reprob",
    "remode": "remode", "recount": "recount", "hflip": "hflip", "scale": "scale",
    "ratio": "ratio", "train_interpolation": "train_interpolation", "crop_pct": "crop_pct",
    "repeated_aug": "repeated_aug", "drop_path": "drop_path", "clip_grad": "clip_grad",
    "clip_mode": "clip_mode", "model_ema": "model_ema", "model_ema_decay": "model_ema_decay",
    "workers": "num_workers", "seed": "seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``biformer train``, in groups."""
    for group in (_data, _model, _optimisation, _augmentation, _run):
        group(parser)


def _data(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="dataset root: DIR/train/<class>/<image> and DIR/val/<class>/<image> "
                   "(default: the embedded digits demo)")
    g.add_argument("--dataset", metavar="NAME", default=None,
                   help="a timm dataset name (torch/cifar10, hfds/..., ...); default: image folder")
    g.add_argument("--train-split", default="train", help="training split (default train)")
    g.add_argument("--val-split", default="val", metavar="NAME|FRACTION",
                   help="validation folder (default val), or a fraction such as 0.1 of the "
                   "training images held out (seeded, stratified) when there is none")
    g.add_argument("--out", metavar="DIR", default="runs/train",
                   help="output directory: checkpoints, metrics, summary (default runs/train)")
    g.add_argument("--limit-train-batches", type=int, default=None, metavar="N",
                   help="train on the first N batches of each epoch (smoke tests)")
    g.add_argument("--limit-val-batches", type=int, default=None, metavar="N",
                   help="validate on the first N batches (smoke tests)")



def _model(parser: argparse.ArgumentParser) -> None:
    bool_flag = argparse.BooleanOptionalAction
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default=None,
                   help="timm model name (reference recipe: biformer_small; demo: biformer_tiny "
                   "shrunk by --model-kwargs)")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                   help="model constructor options, e.g. depths=1,1,2,1 n_win=2 auto_pad=True")
    g.add_argument("--num-classes", type=int, default=None, help="default: classes of the data")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: model's)")
    g.add_argument("--crop-pct", type=float, default=None, help="eval crop (default: model's)")
    g.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth (default: per model, T 0.1 / S 0.15 / B 0.4)")
    g.add_argument("--finetune", metavar="PATH", default=None,
                   help="start from these weights (official or ours); the classifier is "
                   "re-initialised when the number of classes differs")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward (less memory, slower)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (DDP)")
    g.add_argument("--model-ema", action=bool_flag, default=None,
                   help="keep an exponential moving average of the weights (ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=None, help="default 0.99996")



def _optimisation(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimisation (defaults: the recipe, see docs/training.md)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="per process")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: --lr-base x global batch / --lr-base-size)")
    g.add_argument("--lr-base", type=float, default=None, help="default 5e-4")
    g.add_argument("--lr-base-size", type=int, default=None, help="default 512")
    g.add_argument("--opt", default=None, help="timm optimizer name (default adamw)")
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None, help="default 0.05")
    g.add_argument("--sched", default=None, help="timm scheduler name (default cosine)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="default 5")
    g.add_argument("--warmup-lr", type=float, default=None)
    g.add_argument("--min-lr", type=float, default=None)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping (off)")
    g.add_argument("--clip-mode", default=None, choices=("norm", "value", "agc"))
    g.add_argument("--smoothing", type=float, default=None, help="label smoothing (0.1)")



def _augmentation(parser: argparse.ArgumentParser) -> None:
    bool_flag = argparse.BooleanOptionalAction
    g = parser.add_argument_group("augmentation")
    g.add_argument("--aa", default=None, help="auto-augment policy ('none' to disable)")
    g.add_argument("--color-jitter", type=float, default=None)
    g.add_argument("--reprob", type=float, default=None, help="random erasing probability")
    g.add_argument("--remode", default=None)
    g.add_argument("--recount", type=int, default=None)
    g.add_argument("--mixup", type=float, default=None, help="mixup alpha (0.8)")
    g.add_argument("--cutmix", type=float, default=None, help="cutmix alpha (1.0)")
    g.add_argument("--mixup-prob", type=float, default=None)
    g.add_argument("--mixup-switch-prob", type=float, default=None)
    g.add_argument("--mixup-mode", default=None, choices=("batch", "pair", "elem"))
    g.add_argument("--hflip", type=float, default=None)
    g.add_argument("--scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    g.add_argument("--ratio", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    g.add_argument("--train-interpolation", default=None)
    g.add_argument("--repeated-aug", action=bool_flag, default=None,
                   help="repeated augmentation sampler (distributed runs only)")



def _run(parser: argparse.ArgumentParser) -> None:
    bool_flag = argparse.BooleanOptionalAction
    g = parser.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported); none on CPU")
    g.add_argument("--workers", type=int, default=None, help="loader processes per rank")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: 1 for the digits demo, whose small "
                   "tensors run fastest on one thread; else PyTorch's default)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--deterministic", action=bool_flag, default=None,
                   help="deterministic algorithms (default: on for CPU, off for CUDA)")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="resume from this checkpoint (default: OUT/last.pth when it exists)")
    g.add_argument("--no-resume", action="store_true",
                   help="start over even if OUT/last.pth exists")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
