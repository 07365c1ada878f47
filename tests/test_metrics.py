"""DCASE retrieval metrics against a brute-force ranking walk, hand-computed examples, a pinned
regression of the single-relevant numbers, and the organisers' relevance file format."""
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.metrics import audio_to_text_metrics, read_relevance_csv, relevant_ranks, retrieval_metrics


def brute_force(similarity: np.ndarray, relevant: list[list[int]], ks=(1, 5, 10), map_ks=(10,)) -> dict[str, float]:
    """Per query: rank every item, a tie between a relevant and a non-relevant item putting the
    non-relevant one first, then walk the ranking counting hits (the textbook AP@K walk)."""
    aps = {k: [] for k in map_ks}
    recalls = {k: [] for k in ks}
    for row, rel in zip(similarity, relevant):
        rel = set(rel)
        order = sorted(range(len(row)), key=lambda j: (-row[j], j in rel, j))
        hits, precisions = 0, []  # (position, precision at it) of each relevant item
        for position, item in enumerate(order, start=1):
            if item in rel:
                hits += 1
                precisions.append((position, hits / position))
        for k in map_ks:
            aps[k].append(sum(p for position, p in precisions if position <= k) / len(rel))
        for k in ks:
            recalls[k].append(sum(1 for position, _ in precisions if position <= k) / len(rel))
    return {**{f"mAP@{k}": float(np.mean(v)) for k, v in aps.items()},
            **{f"R@{k}": float(np.mean(v)) for k, v in recalls.items()}}


def _random_case(seed: int, n_queries: int, n_items: int, ties: bool, max_relevant: int):
    rng = np.random.default_rng(seed)
    if ties:
        sim = rng.integers(0, 5, (n_queries, n_items)).astype(np.float32)  # many ties
    else:
        sim = rng.standard_normal((n_queries, n_items))
    relevant = [rng.choice(n_items, size=rng.integers(1, max_relevant + 1), replace=False).tolist()
                for _ in range(n_queries)]
    for q, rel in enumerate(relevant):  # relevant items score higher on average, so ranks spread
        sim[q, rel] += 1.0 if ties else 1.5
    return sim, relevant


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_relevant", [1, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(ties: bool, max_relevant: int, seed: int) -> None:
    sim, relevant = _random_case(seed, 70, 40, ties, max_relevant)
    ks, map_ks = (1, 3, 5, 10, 16), (1, 5, 10, 16, 40)
    expected = brute_force(sim, relevant, ks, map_ks)
    got = retrieval_metrics(sim, relevant, ks=ks, map_ks=map_ks)
    assert list(got) == list(expected)  # mAP first, then R@k, as the tables print them
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    if max_relevant == 1:  # one index per query is the same as one-element lists
        assert retrieval_metrics(sim, [r[0] for r in relevant], ks=ks, map_ks=map_ks) == got


def test_chunks_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, relevant = _random_case(3, 50, 30, True, 4)
    whole = retrieval_metrics(sim, relevant, map_ks=(10, 16))
    monkeypatch.setattr("hybrid_retrieval.metrics._CHUNK_ELEMENTS", 7 * 30)  # 7 queries per chunk
    assert retrieval_metrics(sim, relevant, map_ks=(10, 16)) == whole


def test_single_relevant_reproduces_the_previous_numbers_exactly() -> None:
    """Values printed by the previous implementation (strictly-higher ranks) on this tie-free
    matrix: without ties the new tie rule changes nothing, to the last bit."""
    rng = np.random.default_rng(2025)
    sim = rng.standard_normal((60, 50))
    rel = rng.integers(0, 50, 60)
    sim[np.arange(60), rel] += 1.5
    expected = {"mAP@10": 0.3411904761904762, "R@1": 0.18333333333333332, "R@5": 0.55, "R@10": 0.7166666666666667}
    assert retrieval_metrics(sim, rel.tolist()) == expected
    assert retrieval_metrics(torch.from_numpy(sim).float(), torch.from_numpy(rel)) == expected
    assert retrieval_metrics(sim, [[int(r)] for r in rel]) == expected


def test_hand_computed_example() -> None:
    # 3 queries over 12 items; relevant items at ranks 1, 3 and 11
    sim = torch.zeros(3, 12)
    sim[0, 4] = 1.0
    sim[1] = torch.linspace(1, 0, 12)
    sim[2] = torch.linspace(1, 0, 12)
    relevant = [4, 2, 10]
    ranks, valid = relevant_ranks(sim, relevant)
    assert ranks[:, 0].tolist() == [1, 3, 11] and valid.all()
    m = retrieval_metrics(sim, relevant)
    assert m["mAP@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == pytest.approx(2 / 3)
    assert m["R@10"] == pytest.approx(2 / 3)


def test_multi_relevant_hand_computed() -> None:
    # scores of 8 items; relevant {1, 4, 6}: item 1 first (rank 1), item 4 ties with non-relevant
    # item 0 (0 goes first: rank 3), item 6 below non-relevant items 0, 2, 3 (rank 6)
    sim = torch.tensor([[0.7, 0.9, 0.5, 0.6, 0.7, 0.1, 0.4, 0.2]])
    ranks, _ = relevant_ranks(sim, [[6, 4, 1]])
    assert ranks.tolist() == [[1, 3, 6]]
    m = retrieval_metrics(sim, [[6, 4, 1]], ks=(1, 3, 5), map_ks=(5, 16))
    assert m["mAP@5"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["mAP@16"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert (m["R@1"], m["R@3"], m["R@5"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_ties_count_against_the_query() -> None:
    sim = torch.tensor([[0.5, 0.5, 0.5, 0.9]])
    assert relevant_ranks(sim, [2])[0].tolist() == [[4]]
    assert retrieval_metrics(sim, [2])["mAP@10"] == pytest.approx(0.25)
    # two tied relevant items go after the non-relevant item they tie with (and the one above)
    assert relevant_ranks(sim, [[1, 2]])[0].tolist() == [[3, 4]]


def test_collapsed_model_scores_about_zero() -> None:
    sim = torch.zeros(50, 200)
    single = retrieval_metrics(sim, list(range(50)))
    multi = retrieval_metrics(sim, [[q, q + 50, q + 100] for q in range(50)], map_ks=(16,))
    assert all(v == 0.0 for v in (*single.values(), *multi.values()))
    # each relevant item goes after every non-relevant one; padding of shorter lists is 0, masked
    ranks, valid = relevant_ranks(torch.ones(2, 5), [[0, 1], [4]])
    assert ranks.tolist() == [[4, 5], [5, 0]] and valid.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad: float) -> None:
    sim = torch.rand(4, 6)
    sim[2, 3] = bad
    with pytest.raises(BadInputError, match="non-finite.*query 2, item 3"):
        retrieval_metrics(sim, [0, 1, 2, 3])


@pytest.mark.parametrize("relevant, message", [
    ([[1], [], [2]], "query 1 has no relevant items"),
    ([[1], [2], [3, 0, 3]], "query 2 lists a relevant item twice"),
    ([[1], [6, 2], [3]], r"query 1 has relevant indices outside \[0, 6\)"),
    ([0, 1, -1], r"query 2 has relevant indices outside \[0, 6\)"),
    ([0, [1], 2], "not a mixture"),
    ([0, 1], "one per query"),
])
def test_bad_relevant_lists_name_the_query(relevant, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        retrieval_metrics(torch.rand(3, 6), relevant)


def test_relevant_as_a_2d_tensor() -> None:
    sim, _ = _random_case(4, 10, 12, False, 1)
    rows = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(q))[:3] for q in range(10)])
    assert retrieval_metrics(sim, rows) == retrieval_metrics(sim, rows.tolist())


def test_audio_to_text() -> None:
    # 2 items, 4 captions (captions 0,1 -> item 0; 2,3 -> item 1)
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    owners = [0, 0, 1, 1]
    m = audio_to_text_metrics(sim, owners)
    # item 0 ranks captions by column 0: [0 (own), 3, 2, 1 (own)] -> hits at ranks 1 and 4
    # item 1 ranks captions by column 1: [1, 2 (own), 3 (own), 0] -> hits at ranks 2 and 3
    ap0 = (1 / 1 + 2 / 4) / 2
    ap1 = (1 / 2 + 2 / 3) / 2
    assert m["mAP@10"] == pytest.approx((ap0 + ap1) / 2)
    assert m["R@1"] == pytest.approx(0.5)
    assert m["R@5"] == pytest.approx(1.0)


# -- the organisers' relevance file ------------------------------------------------------------

PUBLISHED = (
    'query,audio_filenames\n'
    '"A UFO sound is being made from a video game.","[\'SYnth_NoisesAX8.wav\', '
    '\'Reel-to-Reel Tape On Fast Forward.wav\']"\n'
    '"Rain falls, and thunder rumbles far away.","[\'rain_thunder&#39;s edge.wav\']"\n'
    '"A man\'s voice, then a door.","[""door man\'s.wav"", \' Ambience Birds.wav\']"\n'
)


def test_read_relevance_csv_as_published(tmp_path: Path) -> None:
    path = tmp_path / "relevance.csv"
    path.write_text(PUBLISHED, encoding="utf-8")
    assert read_relevance_csv(path) == {
        "A UFO sound is being made from a video game.": ["SYnth_NoisesAX8.wav", "Reel-to-Reel Tape On Fast Forward.wav"],
        "Rain falls, and thunder rumbles far away.": ["rain_thunder&#39;s edge.wav"],  # entity kept as is
        "A man's voice, then a door.": ["door man's.wav", " Ambience Birds.wav"],  # leading space kept
    }


def test_repeated_query_rows_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "relevance.csv"
    path.write_text(PUBLISHED + '"Rain falls, and thunder rumbles far away.","[\'b.wav\', \'rain_thunder&#39;s edge.wav\']"\n',
                    encoding="utf-8")
    assert read_relevance_csv(path)["Rain falls, and thunder rumbles far away."] == [
        "rain_thunder&#39;s edge.wav", "b.wav"]


@pytest.mark.parametrize("row, reason", [
    ('"a query","[\'a.wav\'"', "not a Python list literal"),
    ('"a query","\'a.wav\'"', "non-empty list of file names"),
    ('"a query","[]"', "non-empty list of file names"),
    ('"a query","[1, 2]"', "non-empty list of file names"),
    ('"a query","__import__(\'os\').system(\'true\')"', "not a Python list literal"),
    ('"a query"', "expected 2 fields"),
    ('"a query","[\'a.wav\']",extra', "expected 2 fields"),
])
def test_malformed_relevance_row_names_file_and_line(tmp_path: Path, row: str, reason: str) -> None:
    path = tmp_path / "relevance.csv"
    path.write_text(PUBLISHED + row + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=rf"relevance\.csv: line 5: .*{reason}"):
        read_relevance_csv(path)


def test_relevance_header_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "relevance.csv"
    path.write_text("caption,files\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="line 1: expected the header query,audio_filenames"):
        read_relevance_csv(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_relevance_csv(tmp_path / "nope.csv")
