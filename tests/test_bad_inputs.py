"""Bad input through every command-line surface, table-driven.

Each case prepares its input (a damaged copy of a good checkpoint, index, model, CSV, ...), runs one
surface (`hybrid-retrieval tag | index build | index info | index add | index remove | search | similar | predict | classify |
rank-text | embed`, `scripts/eval_map10.py`, `scripts/make_synthmusic.py`, `scripts/bench.py` in-process;
`scripts/train.py` as a process)
and checks: the exit status, exactly one error line naming the file or value (no traceback), and,
where a command has other inputs, that they were still processed.

A case that succeeds (status 0) with `named` values must name each of them in a warning line
(a file skipped, the others processed).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import read_only
from safetensors import safe_open
from safetensors.torch import save_file

from hybrid_retrieval.cli import main as cli_main
from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.experiments.speed import run_benchmarks

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tone(path: Path, freq: float, seconds: float = 4.0) -> Path:
    t = np.arange(int(SR * seconds)) / SR
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


@dataclass
class World:
    """Good inputs of every kind, made once; cases damage copies of them."""

    root: Path
    clips: Path  # three good clips
    run: Path  # a run folder whose checkpoint has no optimizer state (export-only)
    checkpoint: Path  # its checkpoint folder
    index: Path  # an index of `clips` built with it
    csn: Path  # a similarity model (log-mel CNN, untrained)
    dataset: Path  # a Clotho-layout dataset (tones)
    weights: Path  # the released mn04_as weights


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, weights_dir: Path, tone_dataset: Path) -> World:
    from hybrid_retrieval.disentangled.checkpoint import save_model
    from hybrid_retrieval.disentangled.features import create_source
    from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        patch.setenv("HYBRID_RETRIEVAL_CACHE", str(root / "cache"))
        clips = root / "clips"
        for name, freq in (("low.wav", 110.0), ("high.wav", 2000.0), ("mid.wav", 600.0)):
            _tone(clips / name, freq)
        torch.manual_seed(0)
        model = create_model("mn04_minilm", embed_dim=32).eval()
        checkpoint = save_checkpoint(root / "run" / "checkpoints" / "epoch-0001", model, {"audio_pretrained": True},
                                     TrainingState(1, 1), frozen=("audio", "text"))
        index = root / "clips.index"
        assert cli_main(["index", "build", str(clips), "--checkpoint", str(root / "run"), "--out", str(index)]) == 0
        source = create_source("melcnn")
        csn = ConditionalSimilarityNet(CSNConfig(encoder="melcnn", embed_dim=16, hidden=16), source.dim)
        save_model(root / "csn", csn, source, {"audio_weights": None})
    return World(root, clips, root / "run", checkpoint, index, root / "csn", tone_dataset, weights_dir)


# ------------------------------------------------------------------------------------------------
# Damaging copies of the good inputs


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    return target


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    result = edit(data)
    path.write_text(result if isinstance(result, str) else json.dumps(data))


def checkpoint_with(w: World, tmp: Path, damage: Callable[[Path], None]) -> Path:
    folder = _copy(w.checkpoint, tmp / "checkpoint")
    damage(folder)
    return folder


def csn_with(w: World, tmp: Path, damage: Callable[[Path], None]) -> Path:
    folder = _copy(w.csn, tmp / "csn")
    damage(folder)
    return folder


def index_with(w: World, tmp: Path, header: Callable[[dict], object] = lambda h: h,
               tensors: Callable[[dict], None] = lambda t: None) -> Path:
    """A copy of the good index with its header and tensors edited."""
    with safe_open(str(w.index), "pt") as handle:
        meta = json.loads(handle.metadata()["header"])
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    edited = header(meta)
    tensors(stored)
    target = tmp / "edited.index"
    save_file(stored, str(target), metadata={"header": json.dumps(meta if edited is None else edited)})
    return target


def items_edit(change: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(stored: dict) -> None:
        items = json.loads(bytes(stored["items"].numpy()).decode())
        change(items)
        stored["items"] = torch.frombuffer(bytearray(json.dumps(items).encode()), dtype=torch.uint8)
    return edit


def faiss_index_with_damaged_blob(w: World, tmp: Path) -> Path:
    from hybrid_retrieval.index import load_index, save_index

    index = load_index(w.index)
    index.use_backend("faiss", kind="hnsw", progress=False)
    good = save_index(index, tmp / "faiss.index")
    with safe_open(str(good), "pt") as handle:
        meta = handle.metadata()
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    stored["faiss"] = stored["faiss"][: len(stored["faiss"]) // 3].clone()
    save_file(stored, str(good), metadata=meta)
    return good


def csv_file(tmp: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp / name
    path.write_bytes(text.encode(encoding))
    return path


def dataset_with_caption_row(w: World, tmp: Path, file_name: str) -> Path:
    root = _copy(w.dataset, tmp / "dataset")
    captions = root / "clotho_captions_evaluation.csv"
    captions.write_text(captions.read_text() + f'"{file_name}",a,b,c,d,e\n')
    return root


# ------------------------------------------------------------------------------------------------
# The table


@dataclass
class Case:
    name: str
    argv: Callable[[World, Path], list[str]]  # the command line, given the world and a fresh folder
    status: int  # expected exit status
    named: tuple[str, ...] = ()  # what the one error line must name ("{tmp}": the case's folder)
    locked: str | None = None  # a folder (relative to the case's) made read-only during the run
    also: Callable[[World, Path, str], None] | None = None  # checks of stdout: other inputs processed
    env: dict = field(default_factory=dict)


def _foreign_catalogue(w: World, tmp: Path) -> Path:
    """A similarity catalogue file whose fingerprint is not that of w.csn."""
    from hybrid_retrieval.disentangled.search import Catalogue

    return Catalogue(torch.zeros(1, 16), [str(w.clips / "low.wav")], "another").save(tmp / "other.catalogue")


def _indexed(count: int) -> Callable[[World, Path, str], None]:
    def check(w: World, tmp: Path, out: str) -> None:
        assert f"indexed {count} items" in out
    return check


def _nothing_written(name: str) -> Callable[[World, Path, str], None]:
    def check(w: World, tmp: Path, out: str) -> None:
        assert not list(tmp.rglob(name)), f"{name} was written"
    return check


def _build(w: World, t: Path, *extra: str, source: Path | str | None = None,
           checkpoint: Path | None = None) -> list[str]:
    out = [] if "--out" in extra else ["--out", str(t / "x.index")]
    return ["index", "build", str(source or w.clips), "--checkpoint", str(checkpoint or w.run), *out, *extra]


def _predict(w: World, t: Path, *extra: str) -> list[str]:
    queries = t / "queries.csv"
    queries.write_text("caption\na low hum\n", encoding="utf-8")
    out = [] if "--out" in extra else ["--out", str(t / "p.csv")]
    return ["predict", "--checkpoint", str(w.run), "--audio", str(w.clips), "--queries", str(queries), *out, *extra]


def _similar(w: World, *extra: str, query: Path | None = None, catalog: Path | None = None,
             checkpoint: Path | None = None) -> list[str]:
    return ["similar", str(query or w.clips / "low.wav"), "--catalog", str(catalog or w.clips),
            "--checkpoint", str(checkpoint or w.csn), *extra]


def _classify(w: World, *extra: str, audio: Path | None = None, checkpoint: Path | str | None = None) -> list[str]:
    labels = [] if "--labels" in extra else ["--labels", "a low hum,a high whistle"]
    return ["classify", str(audio or w.clips), "--checkpoint", str(checkpoint or w.run), *labels, *extra]


def _rank_text(w: World, texts: Path, *extra: str) -> list[str]:
    return ["rank-text", "--audio", str(w.clips / "low.wav"), "--texts", str(texts), "--checkpoint", str(w.run),
            *extra]


def _embed(w: World, t: Path, *inputs: str, out: Path | None = None) -> list[str]:
    return ["embed", *inputs, "--checkpoint", str(w.run), "--out", str(out or t / "e.npy"), "--no-progress"]


def _eval(w: World, checkpoint: Path | str, root: Path | str, split: str = "evaluation") -> list[str]:
    return ["eval_map10", "--checkpoint", str(checkpoint), "--dataset", "clotho", "--root", str(root),
            "--split", split]


def _synth(out: Path | str, *extra: str) -> list[str]:
    return ["make_synthmusic", "--out", str(out), "--n-train", "4", "--n-val", "4", "--n-eval", "4",
            "--seconds", "4", "--no-progress", *extra]


def _mixed_folder(w: World, tmp: Path) -> Path:
    folder = _copy(w.clips, tmp / "mixed")
    (folder / "broken.wav").write_bytes(b"RIFF nonsense")
    (folder / "empty.flac").write_bytes(b"")
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    return folder


def _bad_audio_folder(w: World, tmp: Path) -> Path:
    """The good clips plus: a clip of 100 samples (padded, embedded), one of NaN samples, a WAV whose
    header promises more data than it holds, and a text file named .mp3."""
    folder = _copy(w.clips, tmp / "bad_audio")
    sf.write(folder / "short.wav", np.full(100, 0.1, dtype=np.float32), SR)
    sf.write(folder / "nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    whole = _tone(tmp / "whole.wav", 440.0).read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.mp3").write_text("these are my notes, not audio")
    return folder


def _prints(*texts: str) -> Callable[[World, Path, str], None]:
    def check(w: World, tmp: Path, out: str) -> None:
        for text in texts:
            assert text.format(tmp=tmp) in out, out
    return check


LONG_QUERY = " ".join(f"word{i}" for i in range(60))
BIG_FIELD = "x" * 200_000  # over the csv module's default field limit (131072)

CASES = [
    # ---- tag (its file loop is the audio-loading work's; these are its arguments and weights)
    Case("tag top 0", lambda w, t: ["tag", str(w.clips / "low.wav"), "--top", "0"], 2, ("--top", "at least 1, not 0")),
    Case("tag top negative", lambda w, t: ["tag", str(w.clips / "low.wav"), "--top", "-1"], 2, ("--top", "-1")),
    Case("tag unknown audio runtime", lambda w, t: ["tag", str(w.clips / "low.wav")], 2,
         ("unknown audio runtime 'fast'", "HYBRID_RETRIEVAL_RUNTIME"), env={"HYBRID_RETRIEVAL_RUNTIME": "fast"}),
    Case("tag truncated weights", lambda w, t: ["tag", str(w.clips / "low.wav"), "--weights",
                                                str(csv_file(t, "half.pt", "PK\x03\x04 cut"))], 2,
         ("cannot read weights file", "{tmp}/half.pt")),
    Case("tag missing weights file", lambda w, t: ["tag", str(w.clips / "low.wav"), "--weights", str(t / "no.pt")],
         2, ("weights file not found", "{tmp}/no.pt")),
    # ---- index build: outputs checked before the work
    Case("build out in a missing folder", lambda w, t: _build(w, t, "--out", str(t / "no" / "x.index")), 2,
         ("cannot write {tmp}/no/x.index", "does not exist")),
    Case("build out in a read-only folder", lambda w, t: _build(w, t, "--out", str(t / "ro" / "x.index")), 2,
         ("cannot write {tmp}/ro/x.index", "does not take new files"), locked="ro"),
    Case("build out is a folder", lambda w, t: _build(w, t, "--out", str(t)), 2, ("cannot write {tmp}", "is a folder")),
    Case("build cache dir read-only", lambda w, t: _build(w, t, "--cache-dir", str(t / "ro" / "features")), 2,
         ("cannot write {tmp}/ro/features", "does not take new files"), locked="ro",
         also=_nothing_written("x.index")),
    # ---- index build: damaged checkpoints are named
    Case("checkpoint 0-byte weights", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: (d / "model.safetensors").write_bytes(b""))), 2,
         ("{tmp}/checkpoint/model.safetensors is damaged or truncated", "0 bytes")),
    Case("checkpoint truncated weights", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]))), 2,
         ("{tmp}/checkpoint/model.safetensors is damaged or truncated",)),
    Case("checkpoint config not JSON", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: (d / "config.json").write_text('{"model": {'))), 2,
         ("{tmp}/checkpoint/config.json is not valid JSON", "line 1")),
    Case("checkpoint config wrong type", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c["model"].update(embed_dim="wide")))), 2,
         ("{tmp}/checkpoint/config.json", "'embed_dim' must be int, not 'wide'")),
    Case("checkpoint config without model", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c.pop("model")))), 2,
         ("{tmp}/checkpoint/config.json has no 'model' section",)),
    Case("checkpoint config a list", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: (d / "config.json").write_text("[1, 2]"))), 2,
         ("{tmp}/checkpoint/config.json holds a JSON list, not an object",)),
    Case("checkpoint weights do not fit config", lambda w, t: _build(w, t, checkpoint=checkpoint_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c["model"].update(embed_dim=48)))), 2,
         ("model.safetensors does not fit its config.json", "tensor 'text_proj.linear.weight' is (32, 384)",
          "needs (48, 384)", "embed_dim=48")),
    Case("run with damaged latest.json", lambda w, t: _build(w, t, checkpoint=_damaged_pointer(w, t)), 2,
         ("{tmp}/run/checkpoints/latest.json is not valid JSON",)),
    # ---- index build: catalogue and metadata CSVs
    Case("build skips unreadable files, indexes the rest", lambda w, t: _build(w, t, source=_mixed_folder(w, t)), 0,
         also=_indexed(3)),
    Case("metadata duplicate rows", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", "file_name,keywords\nlow.wav,a\nhigh.wav,b\nlow.wav,c\n"))), 2,
         ("{tmp}/meta.csv", "'low.wav' appears on lines 2, 4")),
    Case("metadata UTF-16", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", "\ufefffile_name,keywords\nlow.wav,a\n", "utf-16-le"))), 2,
         ("{tmp}/meta.csv is encoded as UTF-16",)),
    Case("metadata UTF-16 without BOM", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", "file_name,keywords\nlow.wav,a\n", "utf-16-le"))), 2, ("{tmp}/meta.csv holds NUL bytes", "UTF-16")),
    Case("metadata field over the csv limit is read", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", f"file_name,description\nlow.wav,{BIG_FIELD}\n"))), 0, also=_indexed(3)),
    Case("metadata row too long", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", "file_name,keywords\nlow.wav,a,extra\n"))), 2, ("{tmp}/meta.csv, line 2", "more fields")),
    Case("metadata without file_name", lambda w, t: _build(w, t, "--metadata", str(csv_file(
        t, "meta.csv", "name,keywords\nlow.wav,a\n"))), 2, ("{tmp}/meta.csv: no 'file_name' column",)),
    Case("metadata missing", lambda w, t: _build(w, t, "--metadata", str(t / "no.csv")), 2,
         ("CSV file not found: {tmp}/no.csv",)),
    Case("dataset file name climbs out", lambda w, t: _build(
        w, t, source=f"clotho:{dataset_with_caption_row(w, t, '../../etc/passwd')}:evaluation"), 2,
         ("clotho_captions_evaluation.csv, line 10", "'../../etc/passwd'", "leaves the dataset folder"),
         also=_nothing_written("x.index")),
    Case("dataset file name absolute", lambda w, t: _build(
        w, t, source=f"clotho:{dataset_with_caption_row(w, t, '/etc/passwd')}:evaluation"), 2,
         ("line 10", "'/etc/passwd'")),
    Case("source neither folder nor split", lambda w, t: _build(w, t, source="nowhere"), 2,
         ("'nowhere' is neither a folder nor a dataset split",)),
    Case("recall queries not UTF-8", lambda w, t: _build(w, t, "--approximate", "hnsw", "--recall-queries", str(
        csv_file(t, "q.txt", "caf\xe9", "latin-1"))), 2, ("{tmp}/q.txt is not UTF-8 text",)),
    Case("target recall above 1", lambda w, t: _build(w, t, "--target-recall", "1.5"), 2, ("--target-recall", "1.5")),
    Case("window seconds negative", lambda w, t: _build(w, t, "--window-seconds", "-1"), 2,
         ("--window-seconds", "at least 0")),
    Case("build workers negative", lambda w, t: _build(w, t, "--workers", "-1"), 2, ("--workers", "at least 0, not -1")),
    Case("build shard items 0", lambda w, t: _build(w, t, "--shard-items", "0"), 2, ("--shard-items", "at least 1")),
    Case("build reads in the main process", lambda w, t: _build(w, t, "--workers", "0"), 0, also=_indexed(3)),
    # ---- bad audio among good files: skipped with one warning naming it, the rest processed
    Case("tag skips a NaN clip, tags the rest", lambda w, t: ["tag", str(_bad_audio_folder(w, t) / "nan.wav"),
         str(t / "bad_audio" / "low.wav")], 1, ("{tmp}/bad_audio/nan.wav", "no finite samples"),
         also=_prints("{tmp}/bad_audio/low.wav")),
    Case("tag a text file named .mp3", lambda w, t: ["tag", str(_bad_audio_folder(w, t) / "notes.mp3")], 1,
         ("{tmp}/bad_audio/notes.mp3", "not an audio file")),
    Case("tag pads a 100-sample clip", lambda w, t: ["tag", str(_bad_audio_folder(w, t) / "short.wav")], 0,
         also=_prints("{tmp}/bad_audio/short.wav")),
    Case("build skips NaN and text clips, indexes the rest", lambda w, t: _build(w, t, source=_bad_audio_folder(w, t)),
         0, ("{tmp}/bad_audio/nan.wav", "{tmp}/bad_audio/notes.mp3", "{tmp}/bad_audio/truncated.wav"),
         also=_indexed(5)),  # three good clips, the short one and the readable part of the truncated one
    Case("similar skips NaN and text clips in a catalogue", lambda w, t: _similar(w, catalog=_bad_audio_folder(w, t)),
         0, ("{tmp}/bad_audio/nan.wav", "{tmp}/bad_audio/notes.mp3"), also=_prints("short.wav")),
    # ---- index info: header and tensors that disagree
    Case("info missing", lambda w, t: ["index", "info", str(t / "no.index")], 2, ("no index at {tmp}/no.index",)),
    Case("info not an index", lambda w, t: ["index", "info", str(csv_file(t, "x.index", "plain text"))], 2,
         ("{tmp}/x.index is not a readable index",)),
    Case("info header without model", lambda w, t: ["index", "info", str(index_with(
        w, t, header=lambda h: h.pop("model") and None))], 2, ("{tmp}/edited.index is a damaged index",
                                                               "'model' is missing")),
    Case("info header not an object", lambda w, t: ["index", "info", str(index_with(w, t, header=lambda h: [h]))], 2,
         ("{tmp}/edited.index is not a hybrid_retrieval index",)),
    Case("info fewer ids than rows", lambda w, t: ["index", "info", str(index_with(
        w, t, tensors=items_edit(lambda i: i["ids"].pop())))], 2, ("damaged index", "2 item ids for 3 embedding rows")),
    Case("info wrong dimension", lambda w, t: ["index", "info", str(index_with(
        w, t, header=lambda h: h.update(dim=64)))], 2, ("damaged index", "header says 64-d embeddings but they are 32-d")),
    Case("info size disagrees", lambda w, t: ["index", "info", str(index_with(
        w, t, header=lambda h: h.update(size=7)))], 2, ("damaged index", "header says 7 items but it holds 3")),
    Case("info NaN embeddings", lambda w, t: ["index", "info", str(index_with(
        w, t, tensors=lambda s: s["embeddings"][1].fill_(float("nan"))))], 2,
         ("damaged index", "1 of its embeddings hold NaN", "'low.wav'")),
    Case("info corrupt FAISS blob", lambda w, t: ["index", "info", str(faiss_index_with_damaged_blob(w, t))], 2,
         ("{tmp}/faiss.index is a damaged index", "FAISS index cannot be read")),
    # ---- index add / remove
    Case("add with another checkpoint", lambda w, t: ["index", "add", str(_copy(w.index, t / "c.index")),
                                                      str(_tone(t / "new.wav", 900.0)), "--checkpoint",
                                                      str(_other_checkpoint(t))], 2,
         ("built with checkpoint", "rebuild the index")),
    Case("add a missing file", lambda w, t: ["index", "add", str(_copy(w.index, t / "c.index")), str(t / "no.wav")],
         2, ("audio file not found: {tmp}/no.wav",)),
    Case("add to a missing index", lambda w, t: ["index", "add", str(t / "no.index"), str(w.clips / "low.wav")], 2,
         ("no index at {tmp}/no.index",)),
    Case("add only unusable files", lambda w, t: ["index", "add", str(_copy(w.index, t / "c.index")),
                                                  str(csv_file(t, "text.wav", "not audio"))], 2,
         ("nothing to add",)),
    Case("add a name the index holds", lambda w, t: ["index", "add", str(_copy(w.index, t / "c.index")),
                                                     str(w.clips)], 2, ("already holds 3 of these items",)),
    Case("remove an unknown name", lambda w, t: ["index", "remove", str(_copy(w.index, t / "c.index")),
                                                 "low.wav", "nothing.wav"], 2, ("not in the index: ['nothing.wav']",)),
    Case("remove every item", lambda w, t: ["index", "remove", str(_copy(w.index, t / "c.index")),
                                            "low.wav", "mid.wav", "high.wav"], 2, ("would leave an empty index",)),
    Case("build ivfpq of three items", lambda w, t: _build(w, t, "--approximate", "ivfpq"), 2,
         ("IVF-PQ index needs at least 1000 items, not 3",), also=_nothing_written("x.index")),
    Case("build milvus without a uri", lambda w, t: _build(w, t, "--backend", "milvus"), 2,
         ("--backend milvus takes --uri",)),
    Case("build milvus uri not a .db file", lambda w, t: _build(w, t, "--backend", "milvus", "--uri",
                                                                str(t / "m.sqlite")), 2,
         ("Milvus URI '{tmp}/m.sqlite' is neither a server",), also=_nothing_written("x.index")),
    Case("build milvus in a missing folder", lambda w, t: _build(w, t, "--backend", "milvus", "--uri",
                                                                 str(t / "no" / "m.db")), 2,
         ("the folder of the Milvus Lite database {tmp}/no/m.db does not exist",), also=_nothing_written("x.index")),
    # ---- search: arguments and queries
    Case("search bad filter", lambda w, t: ["search", str(w.index), "rain", "--filter", "colour=red"], 2,
         ("filter clause 'colour=red'",)),
    Case("search filter with the wrong operator", lambda w, t: ["search", str(w.index), "rain", "--filter", "tag~ra"],
         2, ("tag takes =",)),
    Case("predict top 0", lambda w, t: _predict(w, t, "--top", "0"), 2, ("--top", "not 0")),
    Case("predict out in a missing folder", lambda w, t: _predict(w, t, "--out", str(t / "no" / "p.csv")), 2,
         ("{tmp}/no",), also=_nothing_written("p.csv")),
    Case("predict scores in a read-only folder", lambda w, t: _predict(w, t, "--scores", str(t / "ro" / "s.csv")), 2,
         ("{tmp}/ro",), locked="ro", also=_nothing_written("p.csv")),
    Case("search top 0", lambda w, t: ["search", str(w.index), "rain", "--top", "0"], 2, ("--top", "not 0")),
    Case("search top negative", lambda w, t: ["search", str(w.index), "rain", "--top", "-1"], 2, ("--top", "not -1")),
    Case("search empty query", lambda w, t: ["search", str(w.index), "rain", ""], 2, ("query 2 of 2 is empty",)),
    Case("search blank query", lambda w, t: ["search", str(w.index), "  \t "], 2, ("query 1 of 1 is empty",)),
    Case("search damaged index", lambda w, t: ["search", str(index_with(
        w, t, header=lambda h: h["checkpoint"].pop("path") and None)), "rain"], 2,
         ("damaged index", "'checkpoint.path' is missing")),
    Case("search damaged query identity", lambda w, t: ["search", str(index_with(
        w, t, header=lambda h: h["model"]["parts"].update(query="text"))), "rain"], 2,
         ("{tmp}/edited.index is a damaged index", "'model.parts.query' is a str")),
    Case("search checkpoint with truncated weights", lambda w, t: ["search", str(w.index), "rain", "--checkpoint", str(
        checkpoint_with(w, t, lambda d: (d / "model.safetensors").write_bytes(b"")))], 2,
         ("{tmp}/checkpoint/model.safetensors is damaged or truncated",)),
    Case("search neither queries nor clips", lambda w, t: ["search", str(w.index)], 2,
         ("give one or more text queries, or --audio CLIP",)),
    Case("search text and clip", lambda w, t: ["search", str(w.index), "rain", "--audio", str(w.clips / "low.wav")], 2,
         ("not both",)),
    Case("search clip missing", lambda w, t: ["search", str(w.index), "--audio", str(t / "no.wav")], 2,
         ("audio file not found: {tmp}/no.wav",)),
    Case("search clip a folder", lambda w, t: ["search", str(w.index), "--audio", str(t)], 2,
         ("audio file {tmp} is not a file",)),
    Case("search clip not audio", lambda w, t: ["search", str(w.index), "--audio", str(
        _bad_audio_folder(w, t) / "notes.mp3")], 2, ("{tmp}/bad_audio/notes.mp3", "not an audio file")),
    Case("search clip of NaN samples", lambda w, t: ["search", str(w.index), "--audio", str(
        _bad_audio_folder(w, t) / "nan.wav")], 2, ("{tmp}/bad_audio/nan.wav", "no finite samples")),
    # ---- serve (refused before the server starts)
    Case("serve missing index", lambda w, t: ["serve", str(t / "no.index")], 2, ("{tmp}/no.index",)),
    Case("serve damaged index", lambda w, t: ["serve", str(index_with(
        w, t, header=lambda h: h["checkpoint"].pop("path") and None))], 2, ("damaged index", "'checkpoint.path'")),
    Case("serve port out of range", lambda w, t: ["serve", str(w.index), "--port", "70000"], 2, ("--port", "70000")),
    Case("serve upload cap 0", lambda w, t: ["serve", str(w.index), "--max-upload-mb", "0"], 2, ("--max-upload-mb",)),
    Case("serve metadata CSV missing", lambda w, t: ["serve", str(w.index), "--metadata", str(t / "no.csv")], 2,
         ("{tmp}/no.csv",)),
    Case("serve similarity model missing", lambda w, t: ["serve", str(w.index), "--similar", str(t / "nocsn")], 2,
         ("no similarity model at {tmp}/nocsn",)),
    Case("serve similarity checkpoint beside a model", lambda w, t: ["serve", str(w.index), "--similar", str(w.csn),
                                                                     "--similar-checkpoint", str(w.csn)], 2,
         ("--similar-checkpoint is not used",)),
    Case("serve similarity catalogue of another model", lambda w, t: ["serve", str(w.index), "--similar", str(
        _foreign_catalogue(w, t)), "--similar-checkpoint", str(w.csn)], 2, ("{tmp}/other.catalogue", "another model")),
    # ---- similar
    Case("similar top 0", lambda w, t: _similar(w, "--top", "0"), 2, ("--top", "not 0")),
    Case("similar symlink loop query", lambda w, t: _similar(w, query=_loop(t)), 2,
         ("query audio file {tmp}/loop.wav cannot be opened", "symbolic links")),
    Case("similar missing query", lambda w, t: _similar(w, query=t / "no.wav"), 2,
         ("query audio file not found: {tmp}/no.wav",)),
    Case("similar save-catalog in a missing folder", lambda w, t: _similar(
        w, "--save-catalog", str(t / "no" / "c.catalogue")), 2, ("cannot write {tmp}/no/c.catalogue", "does not exist")),
    Case("similar save-catalog read-only", lambda w, t: _similar(w, "--save-catalog", str(t / "ro" / "c.catalogue")),
         2, ("cannot write {tmp}/ro/c.catalogue",), locked="ro"),
    Case("similar model config not JSON", lambda w, t: _similar(w, checkpoint=csn_with(
        w, t, lambda d: (d / "config.json").write_text("nonsense"))), 2, ("{tmp}/csn/config.json is not valid JSON",)),
    Case("similar model without features section", lambda w, t: _similar(w, checkpoint=csn_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c.pop("features")))), 2,
         ("{tmp}/csn/config.json: the 'features' section is missing",)),
    Case("similar model wrong type", lambda w, t: _similar(w, checkpoint=csn_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c["model"].update(hidden=1.5)))), 2,
         ("{tmp}/csn/config.json", "'hidden' must be int, not 1.5")),
    Case("similar model truncated weights", lambda w, t: _similar(w, checkpoint=csn_with(
        w, t, lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:50]))), 2,
         ("{tmp}/csn/model.safetensors is damaged or truncated",)),
    Case("similar weights do not fit config", lambda w, t: _similar(w, checkpoint=csn_with(
        w, t, lambda d: _edit_json(d / "config.json", lambda c: c["model"].update(hidden=32)))), 2,
         ("model.safetensors does not fit its config.json", "tensor", "hidden=32")),
    Case("similar without the model", lambda w, t: _similar(w, checkpoint=t / "nothing"), 2,
         ("no similarity model at {tmp}/nothing",)),
    Case("similar catalogue file damaged", lambda w, t: _similar(w, catalog=csv_file(t, "c.catalogue", "text")), 2,
         ("{tmp}/c.catalogue is not a readable similarity catalogue",)),
    Case("similar skips unreadable files, ranks the rest", lambda w, t: _similar(
        w, "--json", catalog=_mixed_folder(w, t)), 0, also=lambda w, t, out: _ranked(out, 3)),
    # ---- classify, rank-text, embed; --device and --checkpoint names everywhere
    Case("tag unknown device", lambda w, t: ["tag", str(w.clips / "low.wav"), "--device", "gpu0"], 2,
         ("unknown device 'gpu0'",)),
    Case("similar unknown device", lambda w, t: _similar(w, "--device", "gpu0"), 2, ("unknown device 'gpu0'",)),
    Case("build with a Hub id offline", lambda w, t: _build(w, t, checkpoint="someone/no-model"), 2,
         ("no checkpoint folder someone/no-model here", "offline mode is set")),
    Case("classify prompt without {}", lambda w, t: _classify(w, "--prompt", "music"), 2, ("one {{}}", "'music'")),
    Case("classify one label", lambda w, t: ["classify", str(w.clips), "--checkpoint", str(w.run), "--labels", "hum"],
         2, ("at least two classes",)),
    Case("classify label twice", lambda w, t: _classify(w, "--labels", "hum,beep,hum"), 2, ("['hum']",)),
    Case("classify labels file missing", lambda w, t: _classify(w, "--labels-file", str(t / "no.txt")), 2,
         ("file not found: {tmp}/no.txt",)),
    Case("classify missing audio", lambda w, t: _classify(w, audio=t / "no.wav"), 2,
         ("no audio file or folder {tmp}/no.wav",)),
    Case("classify unknown checkpoint", lambda w, t: _classify(w, checkpoint="nowhere"), 2,
         ("no checkpoint found at nowhere",)),
    Case("classify skips NaN and text clips, classifies the rest", lambda w, t: _classify(
        w, audio=_bad_audio_folder(w, t)), 0, ("{tmp}/bad_audio/nan.wav", "{tmp}/bad_audio/notes.mp3"),
         also=_prints("short.wav", "low.wav")),
    Case("rank-text empty texts", lambda w, t: _rank_text(w, csv_file(t, "texts.txt", "\n  \n")), 2,
         ("{tmp}/texts.txt holds no texts",)),
    Case("rank-text top 0", lambda w, t: _rank_text(w, csv_file(t, "texts.txt", "a hum\n"), "--top", "0"), 2,
         ("--top", "not 0")),
    Case("rank-text texts not UTF-8", lambda w, t: _rank_text(w, csv_file(t, "texts.txt", "caf\xe9", "latin-1")), 2,
         ("{tmp}/texts.txt is not UTF-8 text",)),
    Case("embed audio and texts", lambda w, t: _embed(w, t, str(w.clips), "--text", str(csv_file(t, "x.txt", "a"))),
         2, ("one of the two",)),
    Case("embed nothing", lambda w, t: _embed(w, t), 2, ("one of the two",)),
    Case("embed out not .npy", lambda w, t: _embed(w, t, str(w.clips), out=t / "e.parquet"), 2,
         ("{tmp}/e.parquet", "must end in .npy")),
    Case("embed out in a missing folder", lambda w, t: _embed(w, t, str(w.clips), out=t / "no" / "e.npy"), 2,
         ("cannot write {tmp}/no/e.npy", "does not exist")),
    Case("embed out in a read-only folder", lambda w, t: _embed(w, t, str(w.clips), out=t / "ro" / "e.npy"), 2,
         ("cannot write {tmp}/ro/e.npy", "does not take new files"), locked="ro"),
    # ---- scripts/eval_map10.py
    Case("eval damaged checkpoint", lambda w, t: _eval(w, checkpoint_with(
        w, t, lambda d: (d / "model.safetensors").write_bytes(b"\0" * 10)), w.dataset), 2,
         ("{tmp}/checkpoint/model.safetensors is damaged or truncated",)),
    Case("eval missing root", lambda w, t: _eval(w, w.run, t / "nowhere"), 2, ("{tmp}/nowhere",)),
    Case("eval unknown split", lambda w, t: _eval(w, w.run, w.dataset, "holdout"), 2, ("'holdout'",)),
    Case("eval file name climbs out", lambda w, t: _eval(w, w.run, dataset_with_caption_row(w, t, "../x.wav")), 2,
         ("clotho_captions_evaluation.csv, line 10", "'../x.wav'")),
    Case("eval cache dir read-only", lambda w, t: _eval(w, w.run, w.dataset) + ["--cache-dir", str(t / "ro")], 2,
         ("cannot write {tmp}/ro",), locked="ro"),
    # ---- scripts/make_synthmusic.py
    Case("synth out read-only", lambda w, t: _synth(t / "ro" / "synth"), 2,
         ("cannot write {tmp}/ro/synth", "does not take new files"), locked="ro"),
    Case("synth out is a file", lambda w, t: _synth(csv_file(t, "file", "")), 2, ("{tmp}/file", "not a directory")),
    Case("synth negative count", lambda w, t: _synth(t / "s", "--n-train", "-1"), 2, ("n_train", "-1")),
    Case("synth seconds nan", lambda w, t: _synth(t / "s", "--seconds", "nan"), 2, ("seconds=nan",)),
    Case("synth workers 0", lambda w, t: _synth(t / "s", "--workers", "0"), 2, ("workers", "0")),
    # ---- scripts/bench.py
    Case("bench efficientat repo missing", lambda w, t: ["bench", "--only", "embed", "--efficientat-repo",
                                                         str(t / "nowhere")], 2,
         ("--efficientat-repo {tmp}/nowhere is not a checkout of the original EfficientAT",)),
    # ---- scripts/train.py (a process: sacred prints tracebacks of what it catches)
    Case("train resume without a checkpoint", lambda w, t: ["train", "--resume", str(t)], 2,
         ("no checkpoint found at {tmp}",)),
    Case("train resume an export-only checkpoint", lambda w, t: ["train", "--resume", str(w.run)], 2,
         ("holds no optimizer state", "cannot be resumed")),
    Case("train runs folder read-only", lambda w, t: ["train", "with", "synthmusic"], 2,
         ("cannot write {tmp}/ro/runs", "does not take new files"), locked="ro",
         env={"HYBRID_RETRIEVAL_RUNS": "{tmp}/ro/runs"}),
    Case("train config value of the wrong type", lambda w, t: ["train", "with", "synthmusic", "epochs=many"], 2,
         ("TrainConfig key 'epochs' must be int, not 'many'",), env={"HYBRID_RETRIEVAL_RUNS": "{tmp}/runs"}),
]


def _other_checkpoint(tmp: Path) -> Path:
    """A checkpoint of another model (other projection weights) than the world's index was built with."""
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

    torch.manual_seed(5)
    return save_checkpoint(tmp / "other", create_model("mn04_minilm", embed_dim=32).eval(), {"audio_pretrained": True},
                           TrainingState(1, 1), frozen=("audio", "text"))


def _damaged_pointer(w: World, tmp: Path) -> Path:
    run = _copy(w.run, tmp / "run")
    (run / "checkpoints" / "latest.json").write_text("{checkpoint")
    return run


def _loop(tmp: Path) -> Path:
    loop = tmp / "loop.wav"
    loop.symlink_to(loop)
    return loop


def _ranked(out: str, count: int) -> None:
    results = json.loads(out)["results"]
    assert [r["rank"] for r in results] == list(range(1, count + 1))  # the query's own file is left out


def _run(argv: list[str], env: dict, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    surface = argv[0]
    if surface == "train":
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *argv[1:]], cwd=ROOT,
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        return result.returncode, result.stdout, result.stderr
    try:
        if surface in ("eval_map10", "make_synthmusic"):
            status = run_reporting_errors(lambda: _script(surface).main(argv[1:]))
        elif surface == "bench":
            status = run_reporting_errors(lambda: run_benchmarks(argv[1:]))
        else:
            status = cli_main(argv)
    except SystemExit as exc:  # argparse refusing an argument
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path, capsys: pytest.CaptureFixture,
                   caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(world.weights))
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    argv = case.argv(world, tmp_path)
    env = {key: value.format(tmp=tmp_path) for key, value in case.env.items()}
    for key, value in env.items():  # for the surfaces run in this process
        monkeypatch.setenv(key, value)
    if case.locked:
        (tmp_path / case.locked).mkdir()
        with read_only(tmp_path / case.locked):
            status, out, err = _run(argv, env, capsys)
    else:
        status, out, err = _run(argv, env, capsys)
    assert "Traceback" not in err, err[-3000:]
    assert status == case.status, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    if case.status:
        assert len(errors) == 1, err[-3000:]
        for name in case.named:
            assert name.format(tmp=tmp_path) in errors[0], errors[0]
    else:
        assert not errors, err[-3000:]
        for name in case.named:  # the files skipped, each named in a warning (stderr, or pytest's log capture)
            assert name.format(tmp=tmp_path) in err + caplog.text, err[-3000:] + caplog.text
    if case.also:
        case.also(world, tmp_path, out)


# ------------------------------------------------------------------------------------------------
# Beyond the table: what is printed


ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # retitle the terminal, then clear it


def test_names_are_printed_with_their_control_characters_escaped(world: World, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(world.weights))
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    folder = _copy(world.clips, tmp_path / f"music{ESCAPE}")
    evil = _tone(folder / f"evil{ESCAPE}.wav", 2000.0)
    index = tmp_path / "evil.index"
    assert cli_main(["index", "build", str(folder), "--checkpoint", str(world.run), "--out", str(index)]) == 0
    assert cli_main(["search", str(index), "a high whistle", "--top", "4"]) == 0
    assert cli_main(["index", "info", str(index)]) == 0
    assert cli_main(["similar", str(evil), "--catalog", str(folder), "--checkpoint", str(world.csn)]) == 0
    assert cli_main(["index", "info", str(tmp_path / f"no{ESCAPE}.index")]) == 2
    captured = capsys.readouterr()
    escaped = "\\x1b]0;owned\\x07\\x1b[2J"
    assert "\x1b" not in captured.out and "\x07" not in captured.out
    assert f"evil{escaped}.wav" in captured.out and f"music{escaped}" in captured.out
    assert captured.out.count(f"evil{escaped}.wav") == 2  # a search result, and the line of similar's query
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: no index at {tmp_path}/no{escaped}.index (build one")
    assert cli_main(["search", str(index), "a high whistle", "--json"]) == 0  # JSON escapes by itself
    raw = capsys.readouterr().out
    assert "\x1b" not in raw and f"evil{ESCAPE}.wav" in [hit["id"] for hit in json.loads(raw)["results"]]


def test_a_query_longer_than_the_text_tower_reads_is_named(world: World, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(world.weights))
    assert cli_main(["search", str(world.index), "a low hum", LONG_QUERY, "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    from transformers import AutoTokenizer

    from hybrid_retrieval.text.tower import resolve_text_model

    pieces = len(AutoTokenizer.from_pretrained(resolve_text_model("minilm"))(LONG_QUERY)["input_ids"])
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: query 2 is {pieces} word pieces long; the text tower reads the first 32 of them: 'word0 word1")
    used = warnings[0].split(": ", 1)[1].split("them: ", 1)[1].strip("'")
    assert LONG_QUERY.startswith(used) and len(used) < len(LONG_QUERY) / 3
    assert len(captured.out.splitlines()) == 2  # both queries answered


def test_main_job_without_weights_says_so_first_and_fits_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands it would run (its time is measured by running it: BENCHMARKS.md)."""
    from hybrid_retrieval.audio.pretrained import PRETRAINED, WeightsNotFoundError, weights_cache_dir

    job = _script("main_job")
    monkeypatch.setattr(job, "ROOT", tmp_path)
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))

    def no_weights(name: str):
        raise WeightsNotFoundError("long message", reason="weights mn04_as_mAP_432.pt for mn04_as not found (offline)")

    commands = []

    def step(title: str, args: list[str], env: dict) -> float:
        print(f"== {title}")
        commands.append(args)
        if args[0] == "scripts/train.py":
            (tmp_path / "runs" / "main_job" / "1").mkdir(parents=True)
        return 0.0

    monkeypatch.setattr(job, "resolve_weights", no_weights)
    monkeypatch.setattr(job, "step", step)
    assert job.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    spec = PRETRAINED["mn04_as"]
    assert lines[0] == "WARNING: weights mn04_as_mAP_432.pt for mn04_as not found (offline)."
    assert "will NOT be meaningful" in lines[1]
    assert lines[2].split() == ["curl", "-L", "--create-dirs", "-o", str(weights_cache_dir() / spec.filename), spec.url]
    assert [args[0] for args in commands] == ["scripts/make_synthmusic.py", "scripts/train.py", "scripts/eval_map10.py"]
    assert {"audio_pretrained=False", "epochs=2", f"limit_items={job.FALLBACK_CLIPS}"} <= set(commands[1])
