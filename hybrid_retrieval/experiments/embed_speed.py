"""Embedding speed, audio and text, each against a reference run beside it in the same process.

Audio: 10-s clips/s of the EfficientAT tower (fp32, waveform in, so the front end's cost is
counted), `embed_waveforms` with each runtime and call size, against the original EfficientAT
inference loop (its `AugmentMelSTFT` and `get_model` in eval mode under `no_grad`, imported at
run time from a checkout given by `--efficientat-repo`, holding the same weights) and against a
plain eval-mode loop over this project's own tower. Text: captions/s of the bundled MiniLM
`TextTower` (through `embedding.text_outputs`) against sentence-transformers' `encode` of the
same model folder with the same batch size and token limit.

Every variant is timed once per round, the rounds interleaved, and each ratio is the median of
the per-round ratios, so load from other processes on a shared machine hits both sides alike.
The audio process fixes glibc's allocator thresholds first (`speed.fixed_allocator_thresholds`), so
that no variant's speed depends on what ran before it.
`bench.py --only embed,text` runs these (`experiments/speed.py`); the results are in BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.errors import BadInputError, MissingDependencyError
from hybrid_retrieval.experiments.speed import CLIP_SECONDS, _rate, fixed_allocator_thresholds, rss_mb
from hybrid_retrieval.report import markdown_table

N_CLIPS = 32  # clips per timed call of the batched variants
N_SINGLE = 8  # clips per timed call of the one-clip-per-call variants, one call each
Variant = tuple[Callable[[], object], int]  # (one timed call, clips or captions it embeds)


def check_efficientat_repo(repo: str | Path) -> Path:
    """`repo` as an absolute path, after checking that it holds the original EfficientAT and that
    torchaudio, which its front end imports and this project does not install, is importable."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "models" / "mn" / "model.py").is_file():
        raise BadInputError(f"--efficientat-repo {repo} is not a checkout of the original EfficientAT "
                            "(no models/mn/model.py); clone github.com/fschmid56/EfficientAT there")
    if importlib.util.find_spec("torchaudio") is None:
        raise MissingDependencyError("the original EfficientAT needs torchaudio, which this project does not "
                                     "install: pip install --no-deps --target DIR torchaudio, then PYTHONPATH=DIR")
    return repo


def load_original(repo: str | Path, width_mult: float, state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module,
                                                                                                 torch.nn.Module]:
    """The original EfficientAT's front end and model from a checkout at `repo`, in eval mode and
    holding `state` (loaded strictly: the project's parameter names are the original's)."""
    repo = check_efficientat_repo(repo)
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    try:
        os.chdir(repo)  # helpers/utils.py reads metadata/class_labels_indices.csv from the working folder
        with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the model
            from models.mn.model import get_model
            from models.preprocess import AugmentMelSTFT

            model = get_model(width_mult=width_mult, pretrained_name=None)
            mel = AugmentMelSTFT(n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320)
    finally:
        os.chdir(cwd)
    model.load_state_dict(state, strict=True)
    return mel.eval(), model.eval()


def _clips(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(int(CLIP_SECONDS * SAMPLE_RATE), generator=generator) * 0.1 for _ in range(n)]


def _original_variants(mel: torch.nn.Module, model: torch.nn.Module, clips: list[torch.Tensor]) -> dict[str, Variant]:
    """The original's inference loop (inference.py: spectrogram, then the model on it) one clip at
    a time, and over batches of 4 and 32."""

    def per_clip() -> None:
        with torch.no_grad():
            for wave in clips[:N_SINGLE]:
                model(mel(wave[None]).unsqueeze(0))

    def batched(size: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for start in range(0, N_CLIPS, size):
                    model(mel(torch.stack(clips[start:start + size])).unsqueeze(1))
        return run

    return {"original: 1 clip per call": (per_clip, N_SINGLE), "original: batches of 4": (batched(4), N_CLIPS),
            "original: batches of 32": (batched(32), N_CLIPS)}


def _tower_variants(tower, runtimes: list[str], clips: list[torch.Tensor], compile_: bool) -> dict[str, Variant]:
    """`embed_waveforms` one clip per call (as a query by example or an upload) and 32 per call
    (a catalogue), with each runtime; what the kept inference copy and the CPU cap on a forward
    pass give; a plain eval-mode loop over the tower (the stricter reference)."""
    towers = {}
    for runtime in runtimes:
        towers[runtime] = copy.deepcopy(tower)
        towers[runtime].runtime = runtime
        towers[runtime].embed_waveforms(clips[:1])  # builds and keeps its inference runner (export, compile)
    plain = copy.deepcopy(tower).eval()

    def per_clip(embed: Callable[[torch.Tensor], object]) -> Variant:
        return (lambda: [embed(wave) for wave in clips[:N_SINGLE]]), N_SINGLE

    def per_call(runtime: str, **options) -> Variant:
        return (lambda: towers[runtime].embed_waveforms(clips, batch_size=N_CLIPS, **options)), N_CLIPS

    def plain_loop(size: int) -> Variant:
        def run() -> None:
            with torch.no_grad():
                for start in range(0, N_CLIPS, size):
                    plain(torch.stack(clips[start:start + size]))
        return run, N_CLIPS

    first = runtimes[0]
    variants: dict[str, Variant] = {
        f"embed_waveforms ({first}): 1 clip per call": per_clip(lambda w: towers[first].embed_waveforms([w])),
        "embed_waveforms (eager): 1 clip per call": per_clip(lambda w: towers["eager"].embed_waveforms([w])),
        "  eager, a new inference copy per call (before)": per_clip(
            lambda w: towers["eager"].embed_waveforms([w], runner=towers["eager"].inference_copy())),
    }
    for runtime in runtimes:
        variants[f"embed_waveforms ({runtime}): 32 per call"] = per_call(runtime)
    variants[f"  {first}, one forward of all 32"] = per_call(first, max_forward_samples=sys.maxsize)
    for clips_per_pass in (2, 4, 8):  # the runtime's default is 1 clip a pass
        variants[f"  {first}, forwards of {clips_per_pass} clips"] = per_call(
            first, max_forward_samples=int(clips_per_pass * CLIP_SECONDS * SAMPLE_RATE))
    variants["  eager, one forward of all 32"] = per_call("eager", max_forward_samples=sys.maxsize)
    if compile_:
        runner = tower.inference_copy()
        runner.forward = torch.compile(runner.forward)
        tower.embed_waveforms(clips, batch_size=N_CLIPS, runner=runner)  # compiles
        variants["  eager plus torch.compile of the inference copy"] = (
            lambda: tower.embed_waveforms(clips, batch_size=N_CLIPS, runner=runner)), N_CLIPS
    variants["plain eval loop over the tower: 1 clip per call"] = plain_loop(1)
    variants["plain eval loop over the tower: batches of 4"] = plain_loop(4)
    frontend = plain.frontend
    variants["front end alone (torch): 1 clip per call"] = (
        lambda: [frontend(wave[None]) for wave in clips[:N_SINGLE]]), N_SINGLE
    return variants


def interleaved_rates(variants: dict[str, Variant], rounds: int, device: str,
                      min_seconds: float) -> dict[str, list[float]]:
    """Units/s of each variant in each round; every round times every variant once, in turn."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, units) in variants.items():
            rates[name].append(_rate(fn, units, device, min_seconds=min_seconds, max_calls=10_000))
    return rates


def measure_audio(device: str, model: str, rounds: int, min_seconds: float = 3.0, efficientat_repo: str | None = None,
                  compile: bool = False) -> dict:
    """Clips/s of every audio variant in every round (`interleaved_rates`), the runtime "auto"
    chose, and the largest difference between the original's and the project's embeddings of a
    clip, relative to the largest embedding value."""
    from hybrid_retrieval.audio.runtime import RUNTIME_MODULES, resolve_runtime
    from hybrid_retrieval.audio.tower import create_audio_tower

    fixed_allocator_thresholds()
    torch.manual_seed(0)  # random weights: speed does not depend on them; the same weights each run
    tower = create_audio_tower(f"efficientat:{model}", pretrained=False).to(device).eval()
    clips = _clips(N_CLIPS)
    auto = resolve_runtime("auto", torch.device(device))
    runtimes = [auto] + [r for r in ("eager", *RUNTIME_MODULES) if r != auto and (device == "cpu" or r == "eager")]
    variants: dict[str, Variant] = {}
    result: dict = {"auto": auto}
    if efficientat_repo:
        from hybrid_retrieval.audio.efficientat import EFFICIENTAT_CONFIGS

        mel, original = load_original(efficientat_repo, EFFICIENTAT_CONFIGS[model]["width_mult"], tower.backbone.state_dict())
        mel, original = mel.to(device), original.to(device)
        with torch.no_grad():
            theirs = original(mel(clips[0][None].to(device)).unsqueeze(0))[1].cpu()
        ours = tower.embed_waveforms(clips[:1])[0].embedding
        result["embedding_difference"] = float((theirs - ours).abs().max() / ours.abs().max())
        variants.update(_original_variants(mel, original, [c.to(device) for c in clips]))
    variants.update(_tower_variants(tower, runtimes, [c.to(device) for c in clips], compile))
    result["setup_rss_mb"] = rss_mb()
    result["rates"] = interleaved_rates(variants, rounds, device, min_seconds)
    return result


def _median_ratio(rates: list[float], reference: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(rates, reference))


def audio_table(result: dict, title: str) -> str:
    """One row per variant: median clips/s, the rates of each round, and ratios (medians of the
    per-round ratios) to the original one clip per call, to the original's best batch size of
    that round, and to the plain loop over the project's tower one clip per call."""
    rates = result["rates"]
    references = {}
    originals = [name for name in rates if name.startswith("original")]
    if originals:
        references["× original, 1 clip per call"] = rates["original: 1 clip per call"]
        references["× original, its best batch size"] = [max(r) for r in zip(*(rates[n] for n in originals))]
    references["× plain loop, 1 clip per call"] = rates["plain eval loop over the tower: 1 clip per call"]
    rows = {}
    for name, values in rates.items():
        rows[name] = {"clips/s (median)": f"{statistics.median(values):.1f}",
                      **{column: f"{_median_ratio(values, ref):.2f}" for column, ref in references.items()},
                      "per round": " / ".join(f"{v:.0f}" for v in values)}
    columns = ["clips/s (median)", *references, "per round"]
    return markdown_table(rows, columns, title)


# -- text ------------------------------------------------------------------------------------------------

def benchmark_captions(n: int) -> list[str]:
    """`n` SynthMusic captions (Clotho-like sentences of 8-20 words), the same every run."""
    from hybrid_retrieval.data.synthmusic import clip_text
    from hybrid_retrieval.data.synthmusic_factors import plan_split
    from hybrid_retrieval.data.synthmusic_text import CAPTIONS_PER_CLIP, MetadataNoise

    specs = plan_split(0, "development", -(-n // CAPTIONS_PER_CLIP), CLIP_SECONDS)
    return [c for spec in specs for c in clip_text(spec, 0, MetadataNoise())["captions"]][:n]


def measure_text(device: str, rounds: int, batch_sizes: list[int], n_captions: int = 1024,
                 min_seconds: float = 3.0) -> dict:
    """Captions/s of the project's text tower and of sentence-transformers' `encode` (same model
    folder, batch size and token limit) in every round, and the largest difference between their
    L2-normalised embeddings with the project's text normalisation off (the same sentences in)."""
    from hybrid_retrieval.deps import optional_import
    from hybrid_retrieval.embedding import text_outputs
    from hybrid_retrieval.text.tower import TextTower, resolve_text_model

    sentence_transformers = optional_import("sentence_transformers", "bench", "the text embedding benchmark")
    captions = benchmark_captions(n_captions)
    tower = TextTower().to(device).eval()
    reference = sentence_transformers.SentenceTransformer(resolve_text_model("minilm"), device=device)
    reference.max_seq_length = tower.max_length
    raw = copy.deepcopy(tower)
    raw.normalize = False
    ours = torch.cat([o.embedding for o in text_outputs(raw, captions[:64], progress=False)])
    theirs = reference.encode(captions[:64], convert_to_tensor=True, normalize_embeddings=True).cpu()
    variants: dict[str, Variant] = {}
    for size in batch_sizes:
        variants[f"sentence-transformers encode, batch {size}"] = (
            lambda size=size: reference.encode(captions, batch_size=size, convert_to_tensor=True)), len(captions)
        variants[f"TextTower (text_outputs), batch {size}"] = (
            lambda size=size: text_outputs(tower, captions, batch_size=size, progress=False)), len(captions)
    return {"max_embedding_difference": float((torch.nn.functional.normalize(ours, dim=1) - theirs).abs().max()),
            "captions": len(captions), "setup_rss_mb": rss_mb(),
            "rates": interleaved_rates(variants, rounds, device, min_seconds)}


def text_table(result: dict, title: str) -> str:
    """One row per variant: median captions/s, the ratio to sentence-transformers at the same
    batch size (median of the per-round ratios), and the rates of each round."""
    rates = result["rates"]
    rows = {}
    for name, values in rates.items():
        size = name.rsplit(" ", 1)[1]
        reference = rates[f"sentence-transformers encode, batch {size}"]
        rows[name] = {"captions/s (median)": f"{statistics.median(values):.1f}",
                      "× sentence-transformers, same batch": f"{_median_ratio(values, reference):.2f}",
                      "per round": " / ".join(f"{v:.0f}" for v in values)}
    return markdown_table(rows, ["captions/s (median)", "× sentence-transformers, same batch", "per round"], title)
