"""The training loop: AdamW with per-part learning rates, warm-up + cosine schedule, gradient
clipping, bf16 autocast on CUDA, a checkpoint every epoch, exact resume, and DDP under torchrun.

`train(model_config, train_config, run_dir)` is what scripts/train.py (sacred) calls.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from hybrid_retrieval import distributed as dist_utils
from hybrid_retrieval.audio.pretrained import WeightsNotFoundError
from hybrid_retrieval.data.catalogue import usable_items
from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.losses import ContrastiveLoss
from hybrid_retrieval.model import ModelConfig, RetrievalModel, create_model
from hybrid_retrieval.training.checkpoint import (
    TrainingState,
    find_checkpoint,
    frozen_towers,
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
            raise BadInputError(f"batch_size={global_batch} is not divisible by the {world} processes")
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


def build_model(model_config: ModelConfig, cfg: TrainConfig) -> RetrievalModel:
    """The model to train, its towers frozen as `cfg` asks. Without findable audio weights it says
    so in one line and starts the audio tower from random initialisation, which then trains
    (a random tower is never frozen)."""
    model = None
    if cfg.audio_pretrained:
        try:
            model = create_model(model_config, pretrained=True, audio_weights=cfg.audio_weights)
        except WeightsNotFoundError as exc:
            log.warning("pretrained audio weights unavailable (%s); training the audio tower from random "
                        "initialisation", exc.reason)
    model = model or create_model(model_config, pretrained=False)
    if cfg.freeze_audio and not model.audio_tower.pretrained:
        log.warning("the audio tower is not pretrained, so it trains (freeze_audio ignored)")
    return model.freeze(audio=cfg.freeze_audio and model.audio_tower.pretrained, text=cfg.freeze_text)


def resume_model(cfg: TrainConfig) -> tuple[RetrievalModel, TrainingState]:
    """The model and training state of the checkpoint `cfg.resume` names, frozen as `cfg` asks."""
    checkpoint = find_checkpoint(cfg.resume)
    model, saved = load_checkpoint(checkpoint, audio_weights=cfg.audio_weights)
    state = load_training_state(checkpoint)
    pretrained_audio = "audio" in frozen_towers(saved) or saved["train"].get("audio_pretrained", False)
    log.info("resuming from %s (epoch %d, step %d)", checkpoint, state.epoch, state.step)
    return model.freeze(audio=cfg.freeze_audio and pretrained_audio, text=cfg.freeze_text), state


@dataclass
class TrainingData:
    provider: FeatureProvider
    dataset: PairDataset
    sampler: GlobalBatchSampler
    loader: DataLoader


def training_data(model: RetrievalModel, cfg: TrainConfig, items: list[CatalogueItem], cache_dir: str | None,
                  rank: int = 0, world: int = 1, progress: bool = True) -> TrainingData:
    """Pairs of `items` whose audio can be used (the others dropped with a count), their features
    (cached tower outputs of frozen towers) and the loader."""
    items = usable_items(items, f"training clips of {cfg.dataset}/{cfg.train_split}")
    owners, captions = caption_pairs(items)
    if not owners:
        raise BadInputError(f"no training pairs in {cfg.dataset}/{cfg.train_split} under {cfg.data_root}")
    provider = FeatureProvider(model, items, captions, cache_dir, progress=progress)
    clip_samples = int(cfg.clip_seconds * model.audio_tower.sample_rate) if provider.needs_waveforms else None
    dataset = PairDataset(items, owners, clip_samples, cfg.seed)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_pairs, num_workers=cfg.num_workers)
    return TrainingData(provider, dataset, sampler, loader)


def optimizer_and_schedule(model: RetrievalModel, cfg: TrainConfig,
                           steps_per_epoch: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the parameter groups, with warm-up then cosine decay to min_lr per group."""
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), weight_decay=cfg.weight_decay)
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    min_ratios = [cfg.min_lr / g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, r=r: warmup_cosine(s, warmup, total, r) for r in min_ratios])
    return optimizer, scheduler


def train_step(net: nn.Module, model: RetrievalModel, loss_fn: ContrastiveLoss, optimizer: torch.optim.Optimizer,
               inputs: dict, item_ids: Tensor, grad_clip: float = 0.0, use_amp: bool = False,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Tensor:
    """One optimiser step on one batch: forward (bf16 autocast on CUDA when `use_amp`), the
    contrastive loss, backward, gradient clipping, AdamW (and the schedule). Returns the loss.
    `net` is `model` itself or its DistributedDataParallel wrapper."""
    with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=use_amp):
        queries, items = net(**inputs)
        loss = loss_fn(queries.float(), items.float(), item_ids, model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def train(model_config: ModelConfig, cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train, validating and checkpointing every epoch; returns the last validation metrics and
    the path of the last checkpoint."""
    run_dir = Path(run_dir)
    dist_utils.init_from_env()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    if cfg.resume:
        model, state = resume_model(cfg)
    else:
        model, state = build_model(model_config, cfg), TrainingState(epoch=0, step=0)
    model.to(device)

    train_items = load_items(cfg, cfg.train_split)
    val_items = usable_items(load_items(cfg, cfg.val_split), f"validation clips of {cfg.dataset}/{cfg.val_split}")
    data = training_data(model, cfg, train_items, cfg.cache_dir, rank, world, progress=cfg.progress and rank == 0)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(data.sampler))
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        set_rng_state(state.rng)

    net = dist_utils.wrap_model(model)
    loss_fn = ContrastiveLoss(cfg.loss)
    use_amp = cfg.amp and device.type == "cuda"
    eval_cache = cfg.cache_dir if model.cache_is_valid else None
    metrics: dict = {}
    checkpoint_path = None
    for epoch in range(state.epoch, cfg.epochs):
        data.dataset.epoch = data.sampler.epoch = epoch
        net.train()
        started, seen, running = time.perf_counter(), 0, 0.0
        bar = tqdm(data.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress or rank != 0)
        for batch in bar:
            loss = train_step(net, model, loss_fn, optimizer, data.provider(batch, device), batch["item"].to(device),
                              cfg.grad_clip, use_amp, scheduler)
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
                                              cfg.to_dict(), state, metrics=metrics)
    return {"val": metrics, "checkpoint": str(checkpoint_path) if checkpoint_path else None}
