"""The training loop: AdamW with per-part learning rates, warm-up + cosine schedule, gradient
clipping, bf16 autocast on CUDA, a checkpoint every epoch, exact resume, and DDP under torchrun.

`train(model_config, train_config, run_dir)` is what scripts/train.py (sacred) calls.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from hybrid_retrieval import distributed as dist_utils
from hybrid_retrieval.audio.pretrained import WeightsNotFoundError
from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.losses import ContrastiveLoss
from hybrid_retrieval.model import ModelConfig, RetrievalModel, create_model
from hybrid_retrieval.training.checkpoint import (
    TrainingState,
    find_checkpoint,
    load_checkpoint,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hybrid_retrieval.training.config import TrainConfig
from hybrid_retrieval.training.data import FeatureProvider, PairDataset, collate_pairs

log = logging.getLogger("hybrid_retrieval")


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffles all pairs with a generator seeded by (seed, epoch) and cuts global batches; rank r
    of W takes the r-th slice of each. The global batches are the same for any W, so a
    multi-process run sees the data of a one-process run."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f"batch_size={global_batch} is not divisible by the {world} processes")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.epoch = 0

    def __len__(self) -> int:
        return max(1, self.n // self.global_batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        size = min(self.global_batch, self.n)  # a split smaller than one batch gives one batch
        local = size // self.world
        for b in range(len(self)):
            start = b * size + self.rank * local
            yield order[start:start + local]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from 0 to 1, then cosine decay to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parameter_groups(model: RetrievalModel, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: audio tower, text towers (query + separate metadata copy), heads."""
    towers = {"audio": (model.audio_tower, cfg.lr_audio), "text": (model.text_tower, cfg.lr_text)}
    if model.metadata_tower is not None:
        towers["metadata"] = (model.metadata_tower, cfg.lr_text)
    tower_ids = {id(p) for module, _ in towers.values() for p in module.parameters()}
    groups = [{"name": name, "params": [p for p in module.parameters() if p.requires_grad], "lr": lr}
              for name, (module, lr) in towers.items()]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    groups.append({"name": "head", "params": head, "lr": cfg.lr_head})
    return [g for g in groups if g["params"]]


def load_items(cfg: TrainConfig, split: str) -> list[CatalogueItem]:
    items = load_split(cfg.dataset, cfg.data_root, split)
    return items[: cfg.limit_items] if cfg.limit_items else items


def build_model(model_config: ModelConfig, cfg: TrainConfig) -> tuple[RetrievalModel, bool]:
    """The model to train and whether its audio tower is pretrained. Without findable weights it
    says so in one line and starts the audio tower from random initialisation."""
    if cfg.audio_pretrained:
        try:
            model = create_model(model_config, pretrained=True, audio_weights=cfg.audio_weights)
            return model, model.audio_tower.pretrained
        except WeightsNotFoundError as exc:
            log.warning("pretrained audio weights unavailable (%s); training the audio tower from random "
                        "initialisation", str(exc).split(". Download")[0])
    return create_model(model_config, pretrained=False), False


def train(model_config: ModelConfig, cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train, validating and checkpointing every epoch; returns the last validation metrics and
    the path of the last checkpoint."""
    run_dir = Path(run_dir)
    dist_utils.init_from_env()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    state = TrainingState(epoch=0, step=0)
    if cfg.resume:
        checkpoint = find_checkpoint(cfg.resume)
        model, saved = load_checkpoint(checkpoint, audio_weights=cfg.audio_weights)
        state = load_training_state(checkpoint)
        pretrained_audio = "audio" in saved.get("frozen_towers", {}) or saved["train"].get("audio_pretrained", False)
        log.info("resuming from %s (epoch %d, step %d)", checkpoint, state.epoch, state.step)
    else:
        model, pretrained_audio = build_model(model_config, cfg)
    freeze_audio = cfg.freeze_audio and pretrained_audio
    if cfg.freeze_audio and not pretrained_audio:
        log.warning("the audio tower is not pretrained, so it trains (freeze_audio ignored)")
    model.to(device)
    frozen = tuple(name for name, flag in (("audio", freeze_audio), ("text", cfg.freeze_text)) if flag)
    if freeze_audio:
        model.audio_tower.requires_grad_(False)
    if cfg.freeze_text:
        model.text_tower.requires_grad_(False)
        if model.metadata_tower is not None:
            model.metadata_tower.requires_grad_(False)

    train_items, val_items = load_items(cfg, cfg.train_split), load_items(cfg, cfg.val_split)
    owners, captions = caption_pairs(train_items)
    if not owners:
        raise ValueError(f"no training pairs in {cfg.dataset}/{cfg.train_split} under {cfg.data_root}")
    provider = FeatureProvider(model, train_items, captions, freeze_audio, cfg.freeze_text, cfg.cache_dir,
                               progress=cfg.progress and rank == 0)
    clip_samples = int(cfg.clip_seconds * model.audio_tower.sample_rate) if provider.needs_waveforms else None
    dataset = PairDataset(train_items, owners, clip_samples, cfg.seed)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_pairs, num_workers=cfg.num_workers)

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), weight_decay=cfg.weight_decay)
    steps_per_epoch = len(sampler)
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    min_ratios = [cfg.min_lr / g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, r=r: warmup_cosine(s, warmup, total, r) for r in min_ratios])
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        set_rng_state(state.rng)

    net = dist_utils.wrap_model(model)
    loss_fn = ContrastiveLoss(cfg.loss)
    use_amp = cfg.amp and device.type == "cuda"
    eval_cache = cfg.cache_dir if (freeze_audio and cfg.freeze_text) else None
    metrics: dict = {}
    checkpoint_path = None
    for epoch in range(state.epoch, cfg.epochs):
        dataset.epoch = sampler.epoch = epoch
        net.train()
        for name in frozen:  # frozen towers stay in eval mode (batch-norm statistics, dropout)
            getattr(model, f"{name}_tower").eval()
        started, seen, running = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress or rank != 0)
        for batch in bar:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                queries, items = net(**provider(batch, device))
                loss = loss_fn(queries.float(), items.float(), batch["item"].to(device), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            state.step += 1
            seen += len(batch["item"]) * world
            running = 0.9 * running + 0.1 * loss.item() if running else loss.item()
            bar.set_postfix(loss=f"{running:.3f}", pairs_per_s=f"{seen / (time.perf_counter() - started):.0f}")
        state.epoch = epoch + 1
        last = state.epoch == cfg.epochs
        if rank == 0 and ((cfg.eval_every and state.epoch % cfg.eval_every == 0) or last) and val_items:
            metrics = evaluate(model, val_items, eval_cache, progress=False)
            t2a = metrics["text_to_audio"]
            log.info("epoch %d: loss %.4f  val mAP@10 %.4f  R@1 %.4f  R@10 %.4f", state.epoch, running,
                     t2a["mAP@10"], t2a["R@1"], t2a["R@10"])
        if rank == 0:
            state.optimizer, state.scheduler, state.rng = optimizer.state_dict(), scheduler.state_dict(), rng_state()
            checkpoint_path = save_checkpoint(run_dir / "checkpoints" / f"epoch-{state.epoch:04d}", model,
                                              cfg.to_dict(), state, frozen, metrics)
    return {"val": metrics, "checkpoint": str(checkpoint_path) if checkpoint_path else None}
