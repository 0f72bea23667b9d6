"""torchrun with 2 CPU processes (gloo): DDP training keeps every rank's weights identical."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(state: dict[str, torch.Tensor]) -> str:
    """Same digest as ``biformer.engine.train.weights_digest``, computed independently."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "biformer", "train", "--out", str(out),
        "--model-kwargs", "dims=16,32,64,64", "depths=1,1,1,1", "--batch-size", "16",
        "--epochs", "2", "--limit-train-batches", "4", "--limit-val-batches", "3",
        "--no-tensorboard",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2") == 1  # rank 0 alone prints

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["args"]["global_batch"] == 32
    digests = summary["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # each rank hashed its own weights
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert _digest(last["model"]) == digests[0]  # and rank 0 saved those weights
    assert len(last["rng"]) == 2  # the random state of both ranks, for exact resumes
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])
    assert last["position"] == {**last["position"], "epoch": 2, "step": 0, "num_updates": 8}
    # validation was sharded: the two ranks together saw 3 batches each of the val set
    assert 0 <= summary["final_val_top1"] <= 100
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
