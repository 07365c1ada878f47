"""Two CPU processes (gloo) compute the loss and gradients of one process on the same global batch.

The frozen-tower training step is what runs: `RetrievalModel.forward` on cached tower outputs,
wrapped as the training loop wraps it (`distributed.wrap_model`), and the contrastive loss,
which gathers every rank's embeddings with gradients. Each rank takes its slice of the global
batch, as GlobalBatchSampler gives it. Also a real `torchrun --nproc_per_node 2 scripts/train.py`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_retrieval.distributed import wrap_model
from hybrid_retrieval.losses import ContrastiveLoss
from hybrid_retrieval.model import create_model
from hybrid_retrieval.outputs import TowerOutput

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
BATCH = 8
ITEM_IDS = torch.tensor([0, 1, 2, 0, 3, 4, 2, 5])  # repeated clips: positives across the two ranks
CASES = [("late", "ntxent"), ("mid", "cmc"), ("mid", "ntxent")]


def _model(fusion: str):
    torch.manual_seed(0)
    model = create_model("mn04_minilm", pretrained=False, fusion=fusion, metadata="os", embed_dim=32,
                         learn_temperature=True,
                         fusion_options={"mid": {"width": 32, "layers": 1, "heads": 2, "dropout": 0.0}})
    model.audio_tower.requires_grad_(False)  # frozen towers, as in cached training
    model.text_tower.requires_grad_(False)
    return model.train()


def _inputs() -> dict:
    """Cached-feature inputs of one global batch: audio frames of varying length, captions,
    metadata word pieces (one item without metadata)."""
    g = torch.Generator().manual_seed(1)
    frames = torch.tensor([10, 7, 10, 10, 4, 10, 7, 9])
    audio_mask = torch.arange(10)[None] < frames[:, None]
    audio_tokens = torch.randn(BATCH, 10, 384, generator=g) * audio_mask[..., None]
    audio = TowerOutput(audio_tokens, audio_mask, audio_tokens.sum(1) / frames[:, None])
    text_emb = torch.randn(BATCH, 384, generator=g)
    text = TowerOutput(text_emb[:, None], torch.ones(BATCH, 1, dtype=torch.bool), text_emb)
    meta_tokens = torch.randn(BATCH, 5, 384, generator=g)
    meta_mask = torch.arange(5)[None] < torch.tensor([5, 2, 3, 1, 5, 4, 2, 3])[:, None]
    metadata = TowerOutput(meta_tokens, meta_mask, meta_tokens.mean(1))
    present = torch.tensor([True, True, False, True, True, True, True, True])
    return {"audio": audio, "text": text, "metadata": metadata, "present": present}


def _slice(inputs: dict, part: slice) -> dict:
    def cut(x):
        if isinstance(x, TowerOutput):
            return TowerOutput(x.tokens[part], x.mask[part], x.embedding[part])
        return x[part]
    return {key: cut(value) for key, value in inputs.items()}


def _step(net, model, loss_kind: str, inputs: dict, item_ids: torch.Tensor) -> tuple[float, dict]:
    queries, items = net(**inputs)
    loss = ContrastiveLoss(loss_kind)(queries, items, item_ids, model.logit_scale)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        for fusion, loss_kind in CASES:
            model = _model(fusion)
            results[(fusion, loss_kind)] = _step(wrap_model(model), model, loss_kind, _slice(_inputs(), part),
                                                 ITEM_IDS[part])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_one_process_loss_and_gradients(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for fusion, loss_kind in CASES:
        model = _model(fusion)
        loss, grads = _step(model, model, loss_kind, _inputs(), ITEM_IDS)
        assert {"text_proj.linear.weight", "log_logit_scale"} <= grads.keys()
        assert not any(name.startswith(("audio_tower.", "text_tower.")) for name in grads)
        for rank in ranks:
            rank_loss, rank_grads = rank[(fusion, loss_kind)]
            assert rank_loss == pytest.approx(loss, abs=1e-6)
            assert rank_grads.keys() == grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(rank_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_torchrun_trains_and_rank_zero_writes_one_checkpoint(tmp_path: Path, tone_dataset: Path,
                                                             offline_weights: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "HYBRID_RETRIEVAL_RUNS": str(runs), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "scripts/train.py",
               "with", "synthmusic", "dataset=clotho", f"data_root={tone_dataset}", "batch_size=16", "epochs=1",
               "limit_items=8", f"cache_dir={tmp_path / 'features'}", "progress=False"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith("_")) == ["1"]  # one observed run
    checkpoints = runs / "1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0001", "latest.json"]
    config = json.loads((checkpoints / "epoch-0001" / "config.json").read_text())
    assert config["step"] == 2  # 8 clips x 5 captions = 40 pairs: two global batches of 16 (8 per rank)
