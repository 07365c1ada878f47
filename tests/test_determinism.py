"""A clip's embedding does not depend on its batch, on the thread count or on the process."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from hybrid_retrieval.embedding import embed_catalogue
from hybrid_retrieval.model import create_model

ROOT = Path(__file__).resolve().parents[1]
SECONDS = (2.0, 3.1, 2.0, 2.0, 4.5, 2.0)  # four clips share a length, so they share a forward pass


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    t = lambda s: np.arange(int(32_000 * s)) / 32_000  # noqa: E731
    return [(0.2 * np.sin(2 * np.pi * (200 + 300 * i) * t(s)) + 0.05 * rng.standard_normal(len(t(s))))
            .astype(np.float32) for i, s in enumerate(SECONDS)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_clip_alone_equals_clip_in_a_mixed_length_batch(mn04) -> None:
    clips = _clips()
    alone = [mn04.embed_waveforms([clip])[0] for clip in clips]
    for batch_size in (2, 32):
        together = mn04.embed_waveforms(clips, batch_size=batch_size)
        for single, batched in zip(alone, together):
            _close(batched.embedding, single.embedding)
            _close(batched.tokens, single.tokens)
            _close(batched.logits, single.logits)
    reordered = mn04.embed_waveforms(clips[::-1], batch_size=3)[::-1]
    for single, batched in zip(alone, reordered):
        _close(batched.embedding, single.embedding)


def test_catalogue_item_alone_equals_item_in_a_batch(tmp_path: Path, offline_weights: Path) -> None:
    """Through the whole item path: padded audio tokens and metadata word pieces in mid fusion."""
    torch.manual_seed(0)
    model = create_model("mn04_minilm", fusion="mid", metadata="os", embed_dim=32,
                         fusion_options={"mid": {"width": 64, "layers": 1, "heads": 2, "dropout": 0.1}})
    paths = []
    for i, clip in enumerate(_clips()):
        paths.append(tmp_path / f"clip{i}.wav")
        sf.write(paths[-1], clip, 32_000)
    metadata = ["piano", "", "a long list, of several, keywords, for padding", "drums, bass", "", "voice"]
    together = embed_catalogue(model, paths, metadata, progress=False, chunk_size=4)
    alone = torch.cat([embed_catalogue(model, [p], [m], progress=False) for p, m in zip(paths, metadata)])
    _close(together, alone)
    assert model.training  # restored


def test_embeddings_match_across_processes_and_thread_counts(mn04, weights_dir: Path, tmp_path: Path) -> None:
    """A fresh process, with the default thread count and then one thread, gives this process's embeddings."""
    script = (
        "import sys, torch\n"
        "from test_determinism import _clips\n"
        "from hybrid_retrieval.audio.tower import create_audio_tower\n"
        "tower = create_audio_tower('efficientat:mn04_as', weights=sys.argv[1])\n"
        "runs = []\n"
        "for threads in (torch.get_num_threads(), 1):\n"
        "    torch.set_num_threads(threads)\n"
        "    runs.append(torch.cat([o.embedding for o in tower.embed_waveforms(_clips(), batch_size=4)]))\n"
        "torch.save(torch.stack(runs), sys.argv[2])\n"
    )
    out = tmp_path / "embeddings.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = subprocess.run([sys.executable, "-c", script, str(weights_dir / "mn04_as_mAP_432.pt"), str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    here = torch.cat([o.embedding for o in mn04.embed_waveforms(_clips(), batch_size=4)])
    for other in torch.load(out):
        _close(other, here)
