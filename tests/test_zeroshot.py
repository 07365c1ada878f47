"""Zero-shot classification (`classify`, `model.classify`), audio -> text (`rank-text`), and the
zero-shot table on SynthMusic, against formulas written out here and scikit-learn's AUC."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.metrics import roc_auc_score

from hybrid_retrieval.audio.io import load_audio
from hybrid_retrieval.cli import main
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.experiments.zeroshot_table import PROMPTS, macro_roc_auc, roc_auc
from hybrid_retrieval.index.search_index import build_index
from hybrid_retrieval.models import load_retrieval_model
from hybrid_retrieval.zeroshot import class_probabilities, prompted

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000
LABELS = ["a low hum drones", "a high whistle sounds", "white noise hisses", "a beep at mid pitch"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompts_are_checked() -> None:
    assert prompted(["rock", "jazz"], "this is {} music") == ["this is rock music", "this is jazz music"]
    for names, prompt, message in ((["rock", "jazz"], "music", "one {}"), (["rock", "jazz"], "{} and {}", "one {}"),
                                   (["rock"], "{}", "at least two classes"), (["rock", " "], "{}", "class 2 of 2"),
                                   (["rock", "jazz", "rock"], "{}", "more than once: \\['rock'\\]")):
        with pytest.raises(BadInputError, match=message):
            prompted(names, prompt)


def test_class_probabilities_by_hand() -> None:
    cosines = torch.tensor([[0.30, 0.10, -0.20], [0.05, 0.05, 0.40]])
    scale = 20.0
    single = class_probabilities(cosines, scale)
    multi = class_probabilities(cosines, scale, multi_label=True)
    for i, row in enumerate(cosines.tolist()):
        exps = [math.exp(scale * c) for c in row]
        mean = sum(row) / len(row)
        for c, cos in enumerate(row):
            assert single[i, c].item() == pytest.approx(exps[c] / sum(exps), abs=1e-6)
            assert multi[i, c].item() == pytest.approx(1 / (1 + math.exp(-scale * (cos - mean))), abs=1e-6)
    assert multi[0, 0] > 0.5 > multi[0, 2] and multi[1, 2] > 0.5 > multi[1, 0]  # above / below the clip's mean


def test_roc_auc_is_scikit_learns() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75  # 3 of 4 pairs in order
    assert roc_auc(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0])) == 0.75  # a tie counts one half
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = np.round(rng.random(60), 1)  # many ties
        labels = rng.random(60) < 0.3
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(60, 4))), 1).numpy()
        targets = rng.integers(0, 4, 60)
        assert macro_roc_auc(probabilities, targets) == pytest.approx(
            roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"), abs=1e-12)
    with pytest.raises(BadInputError, match="positive and negative"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh clip of each sound kind of the tone dataset (the trained model never heard them)."""
    folder = tmp_path_factory.mktemp("tones")
    t = np.arange(int(SR * 2.5)) / SR
    for name, wave in (("hum.wav", np.sin(2 * np.pi * 115 * t)), ("whistle.wav", np.sin(2 * np.pi * 2100 * t)),
                       ("noise.wav", np.random.default_rng(5).standard_normal(len(t)) * 0.5),
                       ("beep.wav", np.sin(2 * np.pi * 620 * t))):
        sf.write(folder / name, (0.3 * wave).astype(np.float32), SR)
    return folder


def _reference(run: Path, tones: Path, texts: list[str]) -> tuple[dict[str, torch.Tensor], float]:
    """{file id: cosines with `texts`} from the index's embeddings and the queries' (another path than
    the commands'), and the model's logit scale."""
    from hybrid_retrieval.data.catalogue import load_catalogue
    from hybrid_retrieval.embedding import embed_queries

    model, info = load_retrieval_model(str(run))
    index = build_index(model, load_catalogue(tones), info, window_seconds=10.0, progress=False)
    queries = embed_queries(model, texts, progress=False)
    return {name: queries @ index.embeddings[row] for row, name in enumerate(index.ids)}, float(model.logit_scale)


def test_classify_command(trained_run: Path, tones: Path, offline_weights: Path,
                          capsys: pytest.CaptureFixture) -> None:
    prompts = [f"{label} here" for label in LABELS]
    cosines, scale = _reference(trained_run, tones, prompts)
    assert main(["classify", str(tones), "--checkpoint", str(trained_run), "--labels", ",".join(LABELS),
                 "--prompt", "{} here", "--json"]) == 0
    lines = {line["file"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(lines) == ["beep.wav", "hum.wav", "noise.wav", "whistle.wav"]
    for name, line in lines.items():
        expected = torch.softmax(scale * cosines[name].double(), 0)
        order = torch.argsort(expected, descending=True).tolist()
        assert [entry["label"] for entry in line["labels"]] == [LABELS[c] for c in order]  # best first
        for entry, c in zip(line["labels"], order):
            assert entry["score"] == pytest.approx(float(expected[c]), abs=1e-5)
            assert entry["cosine"] == pytest.approx(float(cosines[name][c]), abs=1e-5)
    truth = {"hum.wav": 0, "whistle.wav": 1, "noise.wav": 2, "beep.wav": 3}
    assert {name: LABELS.index(line["labels"][0]["label"]) for name, line in lines.items()} == truth

    labels_file = tones.parent / "labels.txt"
    labels_file.write_text("\n".join(LABELS[2:]) + "\n")
    assert main(["classify", str(tones / "noise.wav"), "--checkpoint", str(trained_run), "--labels",
                 ",".join(LABELS[:2]), "--labels-file", str(labels_file), "--prompt", "{} here", "--multi-label",
                 "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = cosines["noise.wav"].double()
    expected = torch.sigmoid(scale * (row - row.mean()))
    assert out[0] == str(tones / "noise.wav") and len(out) == 3
    best = torch.argsort(expected, descending=True)[:2].tolist()
    assert [line.split(None, 1)[1] for line in out[1:]] == [LABELS[c] for c in best]
    assert [float(line.split()[0]) for line in out[1:]] == [round(float(expected[c]), 3) for c in best]


def test_model_classify_is_the_commands_score(trained_run: Path, tones: Path, offline_weights: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    model, _ = load_retrieval_model(str(trained_run))
    wave = torch.from_numpy(load_audio(tones / "whistle.wav"))
    scores = model.classify(wave, LABELS)
    assert main(["classify", str(tones / "whistle.wav"), "--checkpoint", str(trained_run), "--labels",
                 ",".join(LABELS), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    for entry in line["labels"]:
        assert entry["score"] == pytest.approx(float(scores[0, LABELS.index(entry["label"])]), abs=1e-5)


def test_rank_text_command(trained_run: Path, tones: Path, tmp_path: Path, offline_weights: Path,
                           capsys: pytest.CaptureFixture) -> None:
    texts = [f"{label} in a room" for label in LABELS] + ["a dog barks at night"]
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(texts) + "\n\n")
    cosines, _ = _reference(trained_run, tones, texts)
    assert main(["rank-text", "--audio", str(tones / "hum.wav"), str(tones / "noise.wav"), "--texts", str(captions),
                 "--checkpoint", str(trained_run), "--top", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(tones / "hum.wav"), str(tones / "noise.wav")]
    for line, name, truth in zip(lines, ("hum.wav", "noise.wav"), (0, 2)):
        order = torch.argsort(cosines[name], descending=True)[:3].tolist()
        assert [hit["rank"] for hit in line["results"]] == [1, 2, 3]
        assert [hit["text"] for hit in line["results"]] == [texts[i] for i in order]
        assert [hit["score"] for hit in line["results"]] == pytest.approx([float(cosines[name][i]) for i in order],
                                                                          abs=1e-4)
        assert line["results"][0]["text"] == texts[truth]
    assert main(["rank-text", "--audio", str(tones / "beep.wav"), "--texts", str(captions),
                 "--checkpoint", str(trained_run), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tones / "beep.wav") and out[2].split(None, 2)[2] == texts[3]


def test_zeroshot_table(tiny_synthmusic: Path, trained_run: Path, tmp_path: Path, offline_weights: Path,
                        capsys: pytest.CaptureFixture) -> None:
    """Accuracy and macro AUC of each model per condition, recomputed here from the clips, the prompts
    and scikit-learn's roc_auc_score."""
    from hybrid_retrieval.data.synthmusic import read_factors

    out = tmp_path / "zeroshot"
    assert _script("eval_zeroshot").main(["--checkpoint", "audioset_tags", "--checkpoint", str(trained_run),
                                          "--root", str(tiny_synthmusic), "--split", "eval", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "table.json").read_text())
    assert (out / "table.md").read_text().strip() == printed.strip()
    rows = [row for row in read_factors(tiny_synthmusic, "evaluation")]
    waves = torch.stack([torch.from_numpy(load_audio(tiny_synthmusic / "clotho_audio_evaluation" / r["file_name"]))
                         for r in rows])
    assert set(result["rows"]) == {"training-free (AudioSet tags)", "content-only"}
    for label, spec in (("training-free (AudioSet tags)", "audioset_tags"), ("content-only", str(trained_run))):
        model, _ = load_retrieval_model(spec)
        with torch.inference_mode():
            clips = model.encode_items(waves)  # 6-s clips: no windows
        for condition, (column, prompt) in PROMPTS.items():
            truth = [r[column] for r in rows]
            classes = sorted(set(truth))
            assert result["classes"][condition] == classes
            with torch.inference_mode():
                prompts = model.encode_text([prompt.replace("{}", name) for name in classes])
            scores = torch.softmax(float(model.logit_scale) * (clips @ prompts.T).double(), 1).numpy()
            targets = np.array([classes.index(t) for t in truth])
            got = result["rows"][label][condition]
            assert got["accuracy"] == pytest.approx(float(np.mean(scores.argmax(1) == targets)), abs=1e-9)
            expected_auc = roc_auc_score(targets, scores, multi_class="ovr", average="macro",
                                         labels=list(range(len(classes))))
            assert got["macro_auc"] == pytest.approx(expected_auc, abs=1e-4)
    chance = next(line for line in printed.splitlines() if line.startswith("| chance |")).split("|")[2:-1]
    assert [float(cell) for cell in chance] == [round(x, 4) for c in PROMPTS
                                                for x in (1 / len(result["classes"][c]), 0.5)]


def test_the_main_job_runs_the_zeroshot_table_on_the_best_hybrid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    job = _script("main_job")
    monkeypatch.setattr(job, "ROOT", tmp_path)
    monkeypatch.setattr(job, "resolve_weights", lambda name: tmp_path / "weights.pt")
    commands = []

    def step(title: str, args: list[str], env: dict) -> float:
        commands.append(args)
        if args[0] == "scripts/train.py":
            (tmp_path / "runs" / "main_job" / "1").mkdir(parents=True)
        if args[0] == "scripts/benchmark.py":  # what write_table leaves: mean mAP@10 per row, its runs folder
            table = tmp_path / "results" / "synthmusic" / "table.json"
            table.parent.mkdir(parents=True)
            rows = {"random": {"per_seed": [{"mAP@10": 0.01}]},
                    "content-only": {"configs": ["content_only"], "per_seed": [{"mAP@10": 0.5}], "runs": "r/co"},
                    "late fusion, CS": {"configs": ["late_cs"], "per_seed": [{"mAP@10": 0.57}], "runs": "r/late_cs"},
                    "mid fusion, CS+OS": {"configs": ["mid_cs_os"], "per_seed": [{"mAP@10": 0.58}, {"mAP@10": 0.59}],
                                          "runs": "r/mid_cs_os"},
                    "late fusion, CS, separate encoder": {"configs": ["late_cs", "separate_encoder"],
                                                          "per_seed": [{"mAP@10": 0.58}], "runs": "r/late_cs_sep"}}
            table.write_text(json.dumps({"header": "", "rows": rows}))
        return 0.0

    monkeypatch.setattr(job, "step", step)
    assert job.main([]) == 0
    zeroshot = next(args for args in commands if args[0] == "scripts/eval_zeroshot.py")
    assert [commands.index(args) for args in commands if args[0] in ("scripts/benchmark.py", "scripts/eval_zeroshot.py")
            ] == [3, 4]  # right after the fusion table
    checkpoints = [zeroshot[i + 1] for i, arg in enumerate(zeroshot) if arg == "--checkpoint"]
    assert checkpoints == [str(tmp_path / "runs" / "main_job" / "1"), "r/mid_cs_os/seed0", "audioset_tags"]
