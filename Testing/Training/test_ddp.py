"""DistributedDataParallel on CPU (gloo, 2 processes under torchrun) against one process on the same global batch.

The worker half of this file runs under ``torchrun`` (``python -m torch.distributed.run``).
BatchNorm layers are put in eval mode in both runs: PyTorch synchronises BatchNorm
statistics across processes only on GPUs (SyncBatchNorm, which the trainer enables
there), so on CPU each process would normalise its own half-batch. Everything else is
the trainer's real code path: the batch plan's sharding, the global-batch Dice (logits
gathered across processes) and DDP's gradient averaging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

WORLD_SIZE = 2


def _config(tmp_path: Path, shared_data: Path, name: str) -> Path:
    ts = shared_data / "ct" / "totalsegmentator_example"
    cfg = {
        # dropout off: each process has its own dropout stream, so masks could not match one process's
        "model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32, "overrides": {"dropout": 0.0}},
        "data": {"train": [{"name": "sm", "image": str(ts / "example_ct_sm.nii.gz"),
                            "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator"}],
                 "batch_size": 4},
        "train": {"max_steps": 3, "checkpoint_every": 2, "threads": 1, "seed": 5, "figures": False,
                  "tensorboard": False, "device": "cpu"},
        "output": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _gradients_of_first_step(config_path: Path):
    """Trainer of ``config_path`` in this process (joins torchrun's group if started by it)."""
    from torch import nn

    from kdseg_train.config import load_config
    from kdseg_train.trainer import Trainer

    trainer = Trainer(load_config(config_path))
    for module in trainer.model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    engine = trainer.engine()
    loader = trainer._loader(0)
    images, labels = next(iter(loader))
    terms = trainer.forward_backward(engine, images, labels)
    grads = {name: p.grad.detach().clone() for name, p in trainer.objective.named_parameters() if p.grad is not None}
    batch = loader.batch_sampler.local_batch(0)
    return trainer, grads, {k: float(v.detach()) for k, v in terms.items()}, batch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD_SIZE}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_on_the_same_global_batch(tmp_path, shared_data):
    config = _config(tmp_path, shared_data, "ddp")
    out = tmp_path / "ddp_grads.pt"
    result = _torchrun(__file__, "gradients", str(config), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    trainer, grads, terms, batch = _gradients_of_first_step(_config(tmp_path, shared_data, "single"))
    assert trainer.ctx.world_size == 1
    # the two processes' shares are exactly the single-process batch, in order
    assert [i for rank in ddp["batches"] for _, i in rank] == [i for _, i in batch]
    assert ddp["terms"]["seg"] == pytest.approx(terms["seg"], abs=1e-6)  # global-batch loss, not a half-batch one
    assert ddp["grads"].keys() == grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _worker(argv) -> None:
    import torch.distributed as dist

    mode, config, out = argv
    assert mode == "gradients"
    trainer, grads, terms, batch = _gradients_of_first_step(Path(config))
    assert trainer.ctx.world_size == WORLD_SIZE and trainer.ctx.backend == "gloo"
    batches = trainer.ctx.gather_objects(batch)
    if trainer.ctx.is_main:
        torch.save({"grads": grads, "terms": terms, "batches": batches}, out)
    dist.barrier()
    trainer.ctx.shutdown()
    # Leave without interpreter finalisation: once in a loaded CI run a rank aborted there
    # ("terminate called without an active exception", gloo threads torn down with the
    # interpreter) after everything above had finished; what this test checks is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(sys.argv[1:])
