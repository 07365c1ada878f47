"""The full-scale dry run of the fine-tuning data path: Clotho's development split at its real
size and shape, generated, and a named config's training data and steps on it.

    python scripts/dryrun.py                                  # the clotho config; ~8 GB in the temporary folder
    python scripts/dryrun.py --clips 200 --step-batch-sizes 1 # a quicker look

(`scripts/dryrun.py` calls `run_dryrun` here.)

1. generate (`write_clotho_like_split`): 3,839 clips of 15-30 s, 44.1 kHz 16-bit mono WAV, in
   Clotho's published layout: `development/`, `clotho_captions_development.csv` (five captions
   per clip), `clotho_metadata_development.csv`; file names like Clotho's, with spaces, leading
   spaces, commas and `&#39;`. The audio is noise plus tones, made with vectorised numpy in
   parallel processes. Written under `--scratch` (default: the system's temporary folder) and
   deleted afterwards unless `--root` names a folder to keep.
2. loader (`measure_loader`): pairs/s of the training loader alone (`training_data`: usable-audio
   check, random crops of the config's `clip_seconds`, the global batch sampler, collation) at
   each `--loader-workers` count, with no model step.
3. step (`measure_step`): seconds per optimizer step (`speed.time_train_steps`: provider inputs,
   forward, loss, backward, clipping, AdamW) with the config's towers at their real shapes and
   random weights: the audio encoder built without its released weights, and a text tower of
   RoBERTa-large's shape (`ROBERTA_LARGE`; the bundled MiniLM tokenizer, whose ids fit its
   vocabulary), and that process's peak memory, at each `--step-batch-sizes` (the config's batch
   of 64 crops of 30 s does not fit a CPU machine's memory; the peak at the config's batch is
   extrapolated linearly from the smallest and largest measured batch, and labelled so).

Each measurement runs in its own process (`speed.run_worker`), so its peak memory is its own.
The verdict compares the loader's pairs/s with the model's.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.report import markdown_table

CLOTHO_DEVELOPMENT_CLIPS = 3839
CLOTHO_RATE = 44_100
# roberta-large's config.json: the shape of the clotho config's text tower.
ROBERTA_LARGE = {"vocab_size": 50_265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "intermediate_size": 4096, "max_position_embeddings": 514, "type_vocab_size": 1}
_WORDS = ("Ambience", "birds", "Rain on roof", "kitchen", "footsteps", "Traffic", "door creak", "Church bells",
          "wind", "Crowd", "water drip", "train station", "dog", "fireworks", "typing", "Harbour")


def clotho_like_name(i: int) -> str:
    """Clip i's file name: words and a number, and Clotho's quirks on a share of them: a leading
    space (e.g. ' Ambience Birds.wav'), `&#39;` (an HTML-escaped apostrophe, as in the published
    CSVs) and a comma (which the CSV must quote)."""
    name = f"{_WORDS[i % len(_WORDS)]} {_WORDS[(i * 7 + 3) % len(_WORDS)].lower()} {i:04d}.wav"
    if i % 11 == 0:
        name = name.replace(" ", "&#39;s ", 1)
    if i % 13 == 0:
        name = name.replace(" ", ", ", 1)
    return " " + name if i % 7 == 0 else name


def _captions(i: int) -> list[str]:
    first, second = _WORDS[i % len(_WORDS)].lower(), _WORDS[(i * 7 + 3) % len(_WORDS)].lower()
    return [f"{first} and {second} can be heard {where}" for where in
            ("in the distance", "close by", "for a while", "over and over", "in a quiet room")]


def _render_clip(i: int, seconds: tuple[float, float], rate: int, seed: int) -> np.ndarray:
    """Clip i as 16-bit samples: a few tones and noise, of a length drawn from `seconds`."""
    rng = np.random.default_rng([seed, i])
    n = int(rng.uniform(*seconds) * rate)
    phase = np.arange(n, dtype=np.float64) / rate
    tones = np.zeros(n, dtype=np.float32)
    for freq in rng.uniform(80.0, 4000.0, size=3):
        tones += np.sin(2 * np.pi * ((freq * phase) % 1.0)).astype(np.float32)
    wave = 0.08 * tones + rng.standard_normal(n, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.1))
    return (np.clip(wave, -1.0, 1.0) * 32_767).astype(np.int16)


def _write_clips(audio_dir: Path, clips: list[tuple[int, str]], seconds: tuple[float, float], rate: int,
                 seed: int) -> int:
    written = 0
    for i, name in clips:
        samples = _render_clip(i, seconds, rate, seed)
        sf.write(audio_dir / name, samples, rate, subtype="PCM_16")
        written += len(samples)
    return written


def write_clotho_like_split(root: str | Path, n_clips: int = CLOTHO_DEVELOPMENT_CLIPS,
                            seconds: tuple[float, float] = (15.0, 30.0), rate: int = CLOTHO_RATE,
                            split: str = "development", seed: int = 0, workers: int | None = None) -> dict:
    """Write a split in Clotho's layout under `root` (see the module docstring); returns what was
    written: clips, hours of audio, bytes. `workers` processes render and write the clips."""
    root = Path(root)
    audio_dir = root / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    names = [clotho_like_name(i) for i in range(n_clips)]
    workers = max(1, min(workers or os.cpu_count() or 1, n_clips))
    chunks = [list(enumerate(names))[k::workers] for k in range(workers)]
    if workers == 1:
        frames = _write_clips(audio_dir, chunks[0], seconds, rate, seed)
    else:
        with ProcessPoolExecutor(workers) as pool:
            frames = sum(pool.map(_write_clips, [audio_dir] * workers, chunks, [seconds] * workers,
                                  [rate] * workers, [seed] * workers))
    with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        writer.writerows([name, *_captions(i)] for i, name in enumerate(names))
    with open(root / f"clotho_metadata_{split}.csv", "w", newline="", encoding="iso-8859-1") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                         "license"])
        writer.writerows([name, f"{_WORDS[i % len(_WORDS)].lower()};generated", i, "", "", "dryrun", "cc0"]
                         for i, name in enumerate(names))
    size = sum(path.stat().st_size for path in audio_dir.iterdir())
    return {"clips": n_clips, "audio_hours": frames / rate / 3600, "bytes": size}


def _split_config(config: str, root: str, overrides: dict):
    from hybrid_retrieval.experiments.config import compose
    from hybrid_retrieval.training.config import split_config

    return split_config(compose([config], {"data_root": root, "progress": False, **overrides}))


def dryrun_model(model_config, audio_encoder: str | None = None, text_shape: dict | None = None):
    """The config's model with its towers at their real shapes and random weights, built offline:
    the audio encoder (`audio_encoder` overrides the config's) without its released weights, and
    a text tower of `text_shape` (default ROBERTA_LARGE) with the bundled tokenizer."""
    from transformers import RobertaConfig

    from hybrid_retrieval.audio.frontend import FrontendConfig
    from hybrid_retrieval.audio.tower import create_audio_tower
    from hybrid_retrieval.model import RetrievalModel
    from hybrid_retrieval.text.tower import TextTower

    audio = create_audio_tower(audio_encoder or model_config.audio_encoder, pretrained=False,
                               frontend=FrontendConfig.from_dict(model_config.frontend))
    text_config = RobertaConfig(**{**ROBERTA_LARGE, **(text_shape or {}), "pad_token_id": 0})
    text = TextTower(max_length=model_config.text_max_length, pooling=model_config.text_pooling,
                     model_config=text_config)
    return RetrievalModel(model_config, audio, text).freeze(audio=False, text=False)


def measure_loader(root: str, config: str, workers: int, batches: int, batch_size: int, device: str,
                   overrides: dict) -> dict:
    """Pairs/s of the config's training loader alone over its first `batches` batches, timed from
    the start of the epoch's iteration (worker start-up included, so that batches the workers
    prepared ahead are not counted as free). The loader needs of the model only its audio rate
    and that the audio tower trains, so a small random model stands in."""
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.loop import load_items, training_data

    model_config, cfg = _split_config(config, root, {**overrides, "batch_size": batch_size, "num_workers": workers})
    model = create_model(model_config, pretrained=False, audio_encoder="efficientat:mn04_as",
                         text_encoder="minilm").freeze(audio=False, text=False)
    data = training_data(model, cfg, load_items(cfg, cfg.train_split), None, progress=False)
    batches = min(batches, len(data.sampler))
    started, pairs = time.perf_counter(), 0
    loader = iter(data.loader)
    for _ in range(batches):
        batch = next(loader)
        pairs += len(batch["pair"])
    elapsed = time.perf_counter() - started
    return {"pairs_per_s": pairs / elapsed, "batches": batches, "crop_samples": int(batch["waveform"].shape[1])}


def measure_step(root: str, config: str, batch_size: int, steps: int, device: str, overrides: dict,
                 audio_encoder: str | None, text_shape: dict | None) -> dict:
    """Seconds per training step of the config's model at its real shapes (`dryrun_model`)."""
    from hybrid_retrieval.experiments.speed import rss_mb, time_train_steps
    from hybrid_retrieval.training.loop import load_items, training_data

    model_config, cfg = _split_config(config, root, {**overrides, "batch_size": batch_size, "num_workers": 0})
    model = dryrun_model(model_config, audio_encoder, text_shape).to(device).train()
    data = training_data(model, cfg, load_items(cfg, cfg.train_split), None, progress=False)
    setup_rss = rss_mb()
    times = time_train_steps(model, cfg, data, device, steps)
    return {"step_s": statistics.median(times), "setup_rss_mb": setup_rss,
            "audio_params": sum(p.numel() for p in model.audio_tower.parameters()),
            "text_params": sum(p.numel() for p in model.text_tower.parameters())}


def _extrapolate(sizes: list[int], values: list[float], at: int) -> float:
    """Straight line through the first and last (size, value) measured, evaluated at `at`."""
    slope = (values[-1] - values[0]) / (sizes[-1] - sizes[0])
    return values[-1] + slope * (at - sizes[-1])


def run_dryrun(argv: list[str] | None = None) -> int:
    from hybrid_retrieval.experiments.speed import machine, mb, run_worker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="clotho", help="named experiment config whose data path runs")
    parser.add_argument("--root", default=None, help="write the split here and keep it (default: a temporary "
                                                     "folder under --scratch, deleted afterwards)")
    parser.add_argument("--scratch", default=None, help="folder for the temporary split (default: system temp)")
    parser.add_argument("--clips", type=int, default=CLOTHO_DEVELOPMENT_CLIPS)
    parser.add_argument("--seconds", default="15,30", help="clip lengths are drawn from this range")
    parser.add_argument("--gen-workers", type=int, default=None, help="processes writing clips (default: all cores)")
    parser.add_argument("--loader-workers", default="0,2,8", help="num_workers values of the loader measurement")
    parser.add_argument("--loader-batches", type=int, default=16, help="batches timed per loader measurement")
    parser.add_argument("--loader-batch-size", type=int, default=None, help="default: the config's batch_size")
    parser.add_argument("--step-batch-sizes", default="1,2,4", help="batch sizes of the step measurement")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per batch size (after one warm-up)")
    parser.add_argument("--clip-seconds", type=float, default=None, help="override the config's crop length")
    parser.add_argument("--audio-encoder", default=None, help="override the config's audio encoder (smoke tests)")
    parser.add_argument("--text-shape", default=None,
                        help="JSON overriding ROBERTA_LARGE's shape keys (smoke tests), e.g. "
                             '\'{"num_hidden_layers": 2, "hidden_size": 64}\'')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measurement (CPU)")
    parser.add_argument("--out", default="results/dryrun", help="folder for dryrun.json and dryrun.md")
    args = parser.parse_args(argv)
    low, high = (float(s) for s in args.seconds.split(","))
    text_shape = json.loads(args.text_shape) if args.text_shape else None
    overrides = {} if args.clip_seconds is None else {"clip_seconds": args.clip_seconds}
    _, cfg = _split_config(args.config, ".", overrides)
    loader_batch = args.loader_batch_size or cfg.batch_size
    info = machine(args.device)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="hybrid_retrieval_dryrun_", dir=args.scratch))
    try:
        print(f"writing {args.clips} clips under {root}", flush=True)
        started = time.perf_counter()
        written = write_clotho_like_split(root, args.clips, (low, high), workers=args.gen_workers)
        generation = {f"{written['clips']:,} clips, {written['audio_hours']:.1f} h of audio": {
            "size, GB": f"{written['bytes'] / 1e9:.2f}", "seconds": f"{time.perf_counter() - started:.0f}",
            "processes": str(args.gen_workers or os.cpu_count())}}
        loaders = {}
        for workers in (int(w) for w in args.loader_workers.split(",")):
            m = run_worker("dryrun_loader", root=str(root), config=args.config, workers=workers,
                           batches=args.loader_batches, batch_size=loader_batch, device="cpu", overrides=overrides,
                           threads=args.threads)
            loaders[workers] = m
        steps = {}
        for batch in (int(b) for b in args.step_batch_sizes.split(",")):
            steps[batch] = run_worker("dryrun_step", root=str(root), config=args.config, batch_size=batch,
                                      steps=args.steps, device=args.device, overrides=overrides,
                                      audio_encoder=args.audio_encoder,
                                      text_shape=text_shape, threads=args.threads)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    crop = next(iter(loaders.values()))["crop_samples"]
    loader_rows = {f"num_workers={w}": {"pairs/s": f"{m['pairs_per_s']:,.1f}",
                                        f"s per batch of {loader_batch}": f"{loader_batch / m['pairs_per_s']:.2f}",
                                        "batches timed": str(m["batches"])} for w, m in loaders.items()}
    any_step = next(iter(steps.values()))
    step_rows = {f"batch {b}": {"s/step (median)": f"{m['step_s']:.2f}", "pairs/s": f"{b / m['step_s']:.2f}",
                                "RSS after setup / peak, MB": f"{mb(m['setup_rss_mb'])} / {mb(m['peak_rss_mb'])}",
                                **({"peak CUDA MB": mb(m["peak_cuda_mb"])} if "peak_cuda_mb" in m else {})}
                 for b, m in steps.items()}
    sizes = sorted(steps)
    if len(sizes) > 1 and cfg.batch_size not in steps:  # activations grow linearly with the batch
        peak = _extrapolate(sizes, [steps[b]["peak_rss_mb"] for b in sizes], cfg.batch_size)
        step_rows[f"batch {cfg.batch_size}: peak memory extrapolated, not measured"] = {
            "s/step (median)": "", "pairs/s": "", "RSS after setup / peak, MB": f"peak ~{mb(peak)}"}
    best_loader = max(m["pairs_per_s"] for m in loaders.values())
    model_rate = max(b / m["step_s"] for b, m in steps.items())
    limit = "the model" if model_rate < best_loader else "the loader"
    verdict = (f"{limit} limits the step rate on this machine: the loader gives {best_loader:,.1f} pairs/s at best, "
               f"the model step {model_rate:,.2f} pairs/s ({best_loader / model_rate:,.1f}x).")
    title = (f"{args.config}: {crop / SAMPLE_RATE:g}-s crops; audio {args.audio_encoder or 'config'} "
             f"({any_step['audio_params'] / 1e6:.1f} M parameters), text {any_step['text_params'] / 1e6:.1f} M "
             f"parameters; {args.device}")
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    sections = {"Generated split": markdown_table(generation, ["size, GB", "seconds", "processes"], "written"),
                "Loader alone (no model)": markdown_table(loader_rows, list(next(iter(loader_rows.values()))),
                                                          f"batch {loader_batch}"),
                "Model step": markdown_table(step_rows, list(next(iter(step_rows.values()))), title)}
    header = "\n".join(f"- {key}: {value}" for key, value in info.items())
    markdown = header + "\n\n" + "\n\n".join(f"### {t}\n\n{table}" for t, table in sections.items())
    markdown += f"\n\n{verdict}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dryrun.md").write_text(markdown)
    (out / "dryrun.json").write_text(json.dumps({"machine": info, "generated": written, "loader": loaders,
                                                 "steps": steps, "verdict": verdict}, indent=1))
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(run_dryrun())
