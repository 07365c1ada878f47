"""The training loop: AdamW with per-part learning rates, warm-up + cosine schedule, gradient
clipping, bf16 autocast on CUDA, a checkpoint every epoch, exact resume, and DDP under torchrun.

`train(model_config, train_config, run_dir)` is what scripts/train.py (sacred) calls.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from hybrid_retrieval import distributed as dist_utils
from hybrid_retrieval.audio.pretrained import WeightsNotFoundError
from hybrid_retrieval.data.catalogue import usable_items
from hybrid_retrieval.data.exclusion import drop_freesound_ids, read_freesound_ids
from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.devices import resolve_device
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.hub import remove_orphans, save_or_rescue
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
    multi-process run sees the data of a one-process run.

    With `weights` (one per pair, not necessarily normalised) an epoch is instead n draws with
    replacement, pair i drawn with probability weights[i] / sum(weights), from the same seeded
    generator: how datasets of different sizes are mixed in given shares."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 weights: Sequence[float] | None = None) -> None:
        if global_batch % world:
            raise BadInputError(f"batch_size={global_batch} is not divisible by the {world} processes")
        if weights is not None and len(weights) != n:
            raise BadInputError(f"{len(weights)} sampling weights for {n} pairs")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def __len__(self) -> int:
        return max(1, self.n // self.global_batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()
        size = min(self.global_batch, self.n)  # a split smaller than one batch gives one batch
        local = size // self.world
        for b in range(len(self)):
            start = b * size + self.rank * local
            yield order[start:start + local]


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


def load_items(cfg: TrainConfig, split: str, dataset: str | None = None,
               root: str | None = None) -> list[CatalogueItem]:
    """The items of `split` of `dataset` under `root` (default: cfg.dataset, cfg.data_root), the
    first cfg.limit_items of them when that is set."""
    items = load_split(dataset or cfg.dataset, root or cfg.data_root, split)
    return items[: cfg.limit_items] if cfg.limit_items else items


@dataclass
class TrainingItems:
    items: list[CatalogueItem]  # the training sets, concatenated in cfg.training_datasets() order
    item_weights: list[float] | None  # the sampling weight of each pair of each item; None: all equal


def load_training_items(cfg: TrainConfig) -> TrainingItems:
    """The training items of every set in cfg.training_datasets() whose audio can be used (the others
    dropped with a count, before training starts), less those cfg.exclude_freesound_ids names (one
    log line with the count per set), and the pair weights their `weight`s ask for: a set
    of weight w and P pairs gives each pair w / P, so its share of an epoch is w / sum(weights)."""
    entries = cfg.training_datasets()
    parts = [usable_items(load_items(cfg, entry["split"], entry["name"], entry["root"]),
                          f"training clips of {entry['name']}/{entry['split']}") for entry in entries]
    if cfg.exclude_freesound_ids:
        excluded = read_freesound_ids(cfg.exclude_freesound_ids)
        kept = [drop_freesound_ids(items, excluded) for items in parts]
        log.info("%s: dropped %s", cfg.exclude_freesound_ids, ", ".join(
            f"{len(items) - len(left)} of {len(items)} clips of {entry['name']}/{entry['split']}"
            for entry, items, left in zip(entries, parts, kept)))
        parts = kept
    item_weights = None
    if "weight" in entries[0]:  # every entry has one (TrainConfig checks)
        item_weights = [entry["weight"] / max(1, sum(len(item.captions) for item in items))
                        for entry, items in zip(entries, parts) for _ in items]
    return TrainingItems([item for items in parts for item in items], item_weights)


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
    remove_orphans(checkpoint.parent)  # what a kill of that run left half-written
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
                  rank: int = 0, world: int = 1, progress: bool = True,
                  item_weights: list[float] | None = None) -> TrainingData:
    """Pairs of `items`, their features (cached tower outputs of frozen towers) and the loader;
    `item_weights` (see TrainingItems) make the sampler draw pairs in those proportions."""
    owners, captions = caption_pairs(items)
    if not owners:
        where = ", ".join(f"{e['name']}/{e['split']} under {e['root']}" for e in cfg.training_datasets())
        raise BadInputError(f"no training pairs in {where}")
    provider = FeatureProvider(model, items, captions, cache_dir, progress=progress)
    clip_samples = int(cfg.clip_seconds * model.audio_tower.sample_rate) if provider.needs_waveforms else None
    dataset = PairDataset(items, owners, clip_samples, cfg.seed)
    weights = None if item_weights is None else [item_weights[owner] for owner in owners]
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world, weights)
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
    contrastive loss, backward, gradient clipping, AdamW, the temperature's clamp (and the
    schedule). Returns the loss.
    `net` is `model` itself or its DistributedDataParallel wrapper."""
    with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=use_amp):
        queries, items = net(**inputs)
        loss = loss_fn(queries.float(), items.float(), item_ids, model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    model.clamp_temperature()
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

    train_items = load_training_items(cfg)
    val_items = usable_items(load_items(cfg, cfg.val_split), f"validation clips of {cfg.dataset}/{cfg.val_split}")
    data = training_data(model, cfg, train_items.items, cfg.cache_dir, rank, world,
                         progress=cfg.progress and rank == 0, item_weights=train_items.item_weights)
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
            try:
                metrics = evaluate(model, val_items, eval_cache, progress=False)
            except BadInputError as exc:  # e.g. NaN scores from a model that diverged
                raise BadInputError(f"validation after epoch {state.epoch}: {exc}") from exc
            t2a = metrics["text_to_audio"]
            log.info("epoch %d: loss %.4f  val mAP@10 %.4f  R@1 %.4f  R@10 %.4f", state.epoch, running,
                     t2a["mAP@10"], t2a["R@1"], t2a["R@10"])
        if rank == 0:
            state.optimizer, state.scheduler, state.rng = optimizer.state_dict(), scheduler.state_dict(), rng_state()
            checkpoint_path = run_dir / "checkpoints" / f"epoch-{state.epoch:04d}"
            save_or_rescue(lambda path: save_checkpoint(path, model, cfg.to_dict(), state, metrics=metrics),
                           checkpoint_path, f"the checkpoint of epoch {state.epoch}")
    return {"val": metrics, "checkpoint": str(checkpoint_path) if checkpoint_path else None}
