"""Running a training session: epochs, validation, checkpoints, the summary.

After every epoch: validation (and of the EMA), a row of history, ``last.pth`` (the resumable
state) and, when the epoch is the best so far, ``best.pth``/``best.safetensors``; then
``metrics.csv``, TensorBoard and ``summary.json``. Non-finite weights or validation losses are
never saved. ``best.pth`` is written after ``last.pth`` from the state ``last.pth`` holds, so a
kill between the two leaves a ``best.pth`` older than the record: the resumed run rewrites it
from ``last.pth`` (``repair_best``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import CommandError
from .epoch import train_epoch
from .evaluate import evaluate
from .logging import format_duration
from .rng import capture_rng
from .run_folder import BEST, LAST, all_finite
from .run_state import weights_digest
from .session import Session

__all__ = ["repair_best", "run_session"]


def _checkpoint(s: Session) -> dict[str, Any]:
    """``last.pth``: the record, the run state, every rank's random state (collective)."""
    rngs = s.env.gather_objects(capture_rng())
    return {**s.record, **s.state.state_dict(), "rng": rngs, "args": s.run_args,
            "wall_time_s": s.elapsed()}


def _save_best(s: Session, row: dict[str, Any] | None) -> None:
    best = s.state.best
    s.folder.save_best({k: v for k, v in s.record.items() if k != "format"},
                       s.state.best_weights(),
                       {"epoch": best["epoch"], "metrics": row, "weights": best["weights"],
                        "args": s.run_args})


def repair_best(s: Session) -> None:
    """After a resume: rewrite ``best.pth`` when it does not hold the recorded best epoch and
    the restored state is that epoch (a kill hit the ``best.pth`` write)."""
    epoch, pos = s.state.best.get("epoch"), s.state.position
    if not s.env.is_main or epoch is None or s.folder.best_epoch() == epoch:
        return
    if pos.epoch == epoch and pos.step == 0:
        row = s.state.history[epoch - 1] if len(s.state.history) >= epoch else None
        _save_best(s, row)
        s.say(f"{BEST} did not hold the best epoch {epoch} (its write was interrupted): "
              f"rewritten from {LAST}")
    else:
        s.say(f"warning: {BEST} does not hold the recorded best epoch {epoch} and cannot be "
              f"rebuilt from {LAST} (epoch {pos.epoch}); summary.json names the best epoch")


def _validate(s: Session) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    env, amp = s.env, s.loop.amp_dtype
    val = evaluate(s.eval_model, s.val_loader, env=env, amp_dtype=amp,
                   limit_batches=s.options.limit_val_batches, progress=True, desc="validate")
    row = {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
           "skipped": val["skipped"]}
    candidates = [("model", val["top1"])]
    if s.state.ema is not None:
        ema = evaluate(s.state.ema.module, s.val_loader, env=env, amp_dtype=amp,
                       limit_batches=s.options.limit_val_batches)
        row.update(ema_val_loss=ema["loss"], ema_val_top1=ema["top1"], ema_val_top5=ema["top5"])
        candidates.append(("ema", ema["top1"]))
    return row, candidates


def _refuse_nonfinite(s: Session, row: dict[str, Any]) -> None:
    epoch = s.state.position.epoch + 1
    bad = [k for k in ("val_loss", "ema_val_loss") if k in row and not row[k] < float("inf")]
    if not all_finite(s.state.net.state_dict()):
        bad.append("weights")
    if bad:
        raise CommandError(f"the {' and '.join(bad)} are not finite after epoch {epoch}: "
                           f"nothing saved ({LAST} keeps epoch {epoch - 1}); lower --lr or set "
                           "--clip-grad")


def _epoch_row(s: Session) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    from timm.utils import distribute_bn

    env, pos = s.env, s.state.position
    if env.distributed:  # every rank keeps the same BatchNorm statistics (their mean)
        distribute_bn(s.state.net, env.world_size, reduce=True)
        if s.state.ema is not None:
            distribute_bn(s.state.ema.module, env.world_size, reduce=True)
    loss_sum, samples, skipped = env.all_reduce_sum(
        [pos.loss_sum, float(pos.samples), float(pos.skipped)])
    val, candidates = _validate(s)
    _refuse_nonfinite(s, val)
    row = {"epoch": pos.epoch + 1, "train_loss": loss_sum / max(samples, 1)}
    row.update({k: v for k, v in val.items() if k != "skipped"})
    row.update(lr=s.state.optimizer.param_groups[0]["lr"], epoch_time_s=pos.seconds,
               img_per_s=samples / pos.seconds if pos.seconds else None,
               skipped_images=int(skipped + val["skipped"]))
    return row, candidates


def _end_epoch(s: Session) -> int:
    """Validate, record, checkpoint; returns a non-zero exit status when signalled."""
    row, candidates = _epoch_row(s)
    improved = s.state.record(row, candidates)
    s.state.position.end_epoch()
    checkpoint = _checkpoint(s)  # collective (random state of every rank)
    if s.env.is_main:
        s.folder.save_last(checkpoint)
        if improved:
            _save_best(s, row)
        log = s.loop.log
        log.write_history(s.state.history)
        log.scalars({"train/epoch_loss": row["train_loss"], "val/loss": row["val_loss"],
                     "val/top1": row["val_top1"], "val/top5": row["val_top5"],
                     "ema_val/top1": row.get("ema_val_top1")}, s.state.position.num_updates)
        log.write_summary(summary(s, False))
    del checkpoint
    _print_epoch(s, row)
    if s.env.any(s.loop.stop.signum is not None) and s.state.position.epoch < s.recipe.epochs:
        s.say(f"stopped after epoch {s.state.position.epoch}; {s.folder.file(LAST)} is saved: "
              "run the same command to resume")
        return s.loop.stop.exit_status
    return 0


def _print_epoch(s: Session, row: dict[str, Any]) -> None:
    done, pos = len(s.state.history), s.state.position
    remaining = (s.elapsed() / max(done, 1)) * (s.recipe.epochs - pos.epoch)
    ema = f"  ema top-1 {row['ema_val_top1']:.2f}" if "ema_val_top1" in row else ""
    skip = f"  skipped {row['skipped_images']} unreadable" if row["skipped_images"] else ""
    s.say(f"epoch {row['epoch']}/{s.recipe.epochs}  train loss {row['train_loss']:.4f}  "
          f"val loss {row['val_loss']:.4f}  top-1 {row['val_top1']:.2f}  "
          f"top-5 {row['val_top5']:.2f}{ema}  lr {row['lr']:.2e}  {row['img_per_s'] or 0:.0f} "
          f"img/s  {format_duration(pos.seconds)}  eta {format_duration(remaining)}{skip}")


def summary(s: Session, finished: bool) -> dict[str, Any]:
    last, best = (s.state.history[-1] if s.state.history else {}), s.state.best
    return {
        "model": s.recipe.model, "model_kwargs": dict(s.recipe.model_kwargs),
        "dataset": s.options.dataset, "data": s.options.data, "num_classes": s.num_classes,
        "epochs": s.recipe.epochs, "epochs_done": len(s.state.history), "finished": finished,
        "final_val_top1": last.get("val_top1"), "final_val_top5": last.get("val_top5"),
        "final_val_loss": last.get("val_loss"), "final_ema_val_top1": last.get("ema_val_top1"),
        "best_val_top1": best.get("val_top1"), "best_epoch": best.get("epoch"),
        "best_weights": best.get("weights"), "wall_time_s": round(s.elapsed(), 2),
        "world_size": s.env.world_size, "args": s.run_args,
    }


def _interrupted(s: Session) -> int:
    checkpoint = _checkpoint(s)  # collective
    pos = s.state.position
    if s.env.is_main:
        s.folder.save_last(checkpoint)
        s.loop.log.write_summary(summary(s, False))
    s.say(f"interrupted at epoch {pos.epoch + 1} step {pos.step}/{s.steps}; saved "
          f"{s.folder.file(LAST)}: run the same command to resume")
    return s.loop.stop.exit_status


def _epochs(s: Session) -> int:
    pos = s.state.position
    if pos.epoch >= s.recipe.epochs:
        s.say(f"{s.args.out} already holds {pos.epoch} finished epochs of {s.recipe.epochs}; "
              "nothing to do (pass a larger --epochs, or --no-resume to start over)")
    while pos.epoch < s.recipe.epochs:
        s.seeded.set_epoch(pos.epoch)
        s.sampler.set_epoch(pos.epoch, skip=pos.step * s.recipe.batch_size)
        pos.start_epoch()
        if train_epoch(s.loop, s.state, s.train_loader, s.steps):
            return _interrupted(s)
        status = _end_epoch(s)
        if status:
            return status
    return 0


def run_session(s: Session) -> tuple[int, dict[str, Any]]:
    """Train ``s`` to its last epoch (or a signal); returns ``(exit status, summary)``."""
    n_params = sum(p.numel() for p in s.state.net.parameters())
    s.say(f"{s.recipe.model} ({n_params / 1e6:.2f} M parameters), {s.num_classes} classes, "
          f"{len(s.data.train)} training / {len(s.data.val)} validation images "
          f"(validation: {s.data.val_source}); {s.env.world_size} process(es) on "
          f"{s.env.device.type}, batch {s.recipe.batch_size}x{s.env.world_size}, lr "
          f"{s.run_args['lr']:.3g}, {s.recipe.epochs} epochs; writing {s.args.out}")
    if s.resumed_from:
        repair_best(s)
    s.loop.stop.install()
    try:
        status = _epochs(s)
    finally:
        s.loop.stop.restore()
        s.loop.log.close()
    return status, _finish(s, status)


def _finish(s: Session, status: int) -> dict[str, Any]:
    digests = s.env.gather_objects(weights_digest(s.state.net))
    finished = status == 0 and s.state.position.epoch >= s.recipe.epochs
    final = {**summary(s, finished), "weights_sha256": digests}
    if not s.env.is_main:
        return final
    s.loop.log.write_summary(final)
    if finished and len(set(digests)) > 1:  # mid-epoch, BatchNorm buffers differ by design
        print(f"warning: the ranks ended with different weights: {digests}", file=sys.stderr)
    if finished:
        from ..checkpoint import save_hub_folder

        save_hub_folder(s.state.net, s.args.out, class_names=s.record.get("class_names"),
                        data_config=s.record.get("data_config"))
    if status == 0:
        top1, best = final["final_val_top1"], final["best_val_top1"]
        result = (f"{top1:.2f}% (best {best:.2f}% at epoch {final['best_epoch']})"
                  if top1 is not None else "n/a")
        tb = ", tb/" if os.path.isdir(os.path.join(s.args.out, "tb")) else ""
        s.say(f"done: {len(s.state.history)} epochs in {format_duration(final['wall_time_s'])}; "
              f"val top-1 {result}; {s.args.out}: summary.json, metrics.csv, {LAST}, {BEST}, "
              f"model.safetensors + config.json{tb}")
    return final
