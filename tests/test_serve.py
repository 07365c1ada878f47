"""The HTTP API of `hybrid-retrieval serve` (FastAPI's test client) on the small catalogue of
serve_world.py: answers checked against brute force with the model itself, every refusal a 4xx
JSON error, nothing outside the index ever served."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from serve_world import CLIPS, WEIGHT, ServeWorld

from hybrid_retrieval.audio.io import load_audio
from hybrid_retrieval.cli import build_parser
from hybrid_retrieval.disentangled.search import SimilaritySearch
from hybrid_retrieval.serve.app import create_app
from hybrid_retrieval.serve.batcher import QueryBatcher
from hybrid_retrieval.serve.limits import Limits
from hybrid_retrieval.serve.service import SearchService


@pytest.fixture(scope="module")
def service(serve_world: ServeWorld, weights_dir: Path) -> SearchService:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        patch.setenv("HYBRID_RETRIEVAL_CACHE", str(serve_world.cache))
        return SearchService.open(serve_world.index, similar=str(serve_world.similar), metadata=serve_world.metadata,
                                  limits=Limits(max_upload_bytes=400_000, max_clip_seconds=5.0))


@pytest.fixture(scope="module")
def client(service: SearchService):
    with TestClient(create_app(service)) as client:
        yield client


def _ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_text_search_ranks_as_brute_force_and_splits_late_fusion_scores(service: SearchService, client: TestClient) -> None:
    model, index = service.model, service.index
    query = "a high whistle"
    body = _ok(client.get("/search", params={"q": query, "top": len(CLIPS)}))
    assert body["query"] == query
    with torch.inference_mode():
        q = model.encode_text([query])[0]
        expected = torch.argsort(index.embeddings @ q, descending=True).tolist()
        assert [hit["id"] for hit in body["results"]] == [index.ids[row] for row in expected]
        assert [hit["rank"] for hit in body["results"]] == list(range(1, len(CLIPS) + 1))
        for hit in body["results"]:
            row = index.ids.index(hit["id"])
            assert hit["score"] == pytest.approx(float(index.embeddings[row] @ q), abs=1e-4)
            # the two parts, computed here from the clip and the metadata text by the model's own towers
            wave = torch.from_numpy(load_audio(index.paths[row]))[None]
            audio = model.encode_items(wave, [""])[0]  # an item without metadata: its normalised audio part
            part = hit["breakdown"]
            assert part["source"] == "audio+metadata" and part["fusion"] == "late"
            assert part["audio"] == pytest.approx(float(audio @ q), abs=1e-4)
            if not index.metadata[row]:
                assert hit["id"] == "no metadata.wav" and part["metadata"] is None
                assert part["audio"] == pytest.approx(hit["score"], abs=1e-4)
                continue
            metadata = model.encode_text([index.metadata[row]])[0]  # shared encoder: the query's projection
            fused = (1 - WEIGHT) * audio + WEIGHT * metadata
            assert part["weight"] == pytest.approx(WEIGHT) and part["norm"] == pytest.approx(float(fused.norm()), abs=1e-4)
            assert part["metadata"] == pytest.approx(float(metadata @ q), abs=1e-4)
            assert ((1 - WEIGHT) * part["audio"] + WEIGHT * part["metadata"]) / part["norm"] == \
                pytest.approx(hit["score"], abs=1e-4)
    assert _ok(client.get("/search", params={"q": query}))["results"] == body["results"][:10]  # top defaults to 10


def test_concurrent_text_queries_are_batched_and_answered_each_as_alone(service: SearchService) -> None:
    queries = [f"{CLIPS[i % len(CLIPS)][3] or 'a tone'} take {i}" for i in range(16)]

    async def ask_all() -> tuple[list[dict], list[dict]]:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            service.start()  # the lifespan of the app (ASGITransport does not run it)
            try:
                before = service.text.batches
                together = await asyncio.gather(*(http.get("/search", params={"q": q, "top": 3}) for q in queries))
                batches = service.text.batches - before
                alone = [await http.get("/search", params={"q": q, "top": 3}) for q in queries]
            finally:
                await service.stop()
        assert batches < len(queries)  # some were encoded together
        return [r.json() for r in together], [r.json() for r in alone]

    together, alone = asyncio.run(ask_all())
    for a, b in zip(together, alone):
        assert [h["id"] for h in a["results"]] == [h["id"] for h in b["results"]]
        assert [h["score"] for h in a["results"]] == pytest.approx([h["score"] for h in b["results"]], abs=1e-5)


def test_the_batcher_takes_what_waits_up_to_max_batch_and_hands_errors_to_each() -> None:
    async def run(max_batch: int, items: list[int], fail: bool = False) -> tuple[list, list[int]]:
        sizes = []

        def square(batch):
            sizes.append(len(batch))
            time.sleep(0.01)
            if fail:
                raise ValueError("broken batch")
            return [x * x for x in batch]

        batcher = QueryBatcher(square, max_batch)
        batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
        finally:
            await batcher.stop()
        assert (batcher.batches, batcher.queries, batcher.largest) == (len(sizes), len(items), max(sizes))
        return answers, sizes

    assert asyncio.run(run(32, list(range(10)))) == ([x * x for x in range(10)], [10])
    assert asyncio.run(run(4, list(range(10))))[1] == [4, 4, 2]
    assert asyncio.run(run(1, list(range(3))))[1] == [1, 1, 1]
    answers, _ = asyncio.run(run(8, [1, 2], fail=True))
    assert all(isinstance(a, ValueError) and str(a) == "broken batch" for a in answers)


def test_query_by_example_finds_the_clip_it_was_altered_from(service: SearchService, client: TestClient,
                                                             serve_world: ServeWorld) -> None:
    data = serve_world.example.read_bytes()
    body = _ok(client.post("/search/audio", params={"top": 5}, content=data, headers={"Content-Type": "audio/wav"}))
    scores, rows = service.index.search_audio(service.model, serve_world.example, 5)
    assert [hit["id"] for hit in body["results"]] == [service.index.ids[r] for r in rows.tolist()]
    # an example clip is an item without metadata (search_audio): the item it was altered from, which has
    # none either, is the nearest; the others' metadata weighs 0.7 of their embedding
    assert body["results"][0]["id"] == "no metadata.wav"
    assert [hit["score"] for hit in body["results"]] == pytest.approx(scores.tolist(), abs=1e-5)


@pytest.mark.parametrize("condition", ["tempo", "genre", "all"])
def test_similar_ranks_as_the_similarity_models_brute_force(service: SearchService, client: TestClient,
                                                            serve_world: ServeWorld, condition: str) -> None:
    item = "sub dir/tone 440.wav"
    body = _ok(client.get(f"/similar/sub%20dir/tone%20440.wav?condition={condition}&top=5"))
    assert body["item"] == item and body["condition"] == condition
    search = SimilaritySearch.from_checkpoint(serve_world.similar)
    paths = service.index.paths
    with torch.no_grad():
        embeddings = search.embed(paths)  # every file embedded again, here
        row = service.index.ids.index(item)
        scores = search.model.similarity(embeddings[row:row + 1], embeddings, condition)[0]
    expected = [r for r in torch.argsort(scores, descending=True).tolist() if r != row][:5]
    assert [hit["id"] for hit in body["results"]] == [service.index.ids[r] for r in expected]
    assert [hit["score"] for hit in body["results"]] == pytest.approx([float(scores[r]) for r in expected], abs=1e-5)
    assert all(hit["condition"] == condition for hit in body["results"])


def test_items_metadata_and_audio_with_ranges(service: SearchService, client: TestClient,
                                              serve_world: ServeWorld) -> None:
    item = "sub dir/100% sine.wav"
    body = _ok(client.get("/items/sub%20dir/100%25%20sine.wav"))
    assert body["id"] == item and body["file"] == "100% sine.wav"
    assert body["tags"] == ["sine", "test tone"] and body["description"] == "A pure 1 kHz test tone."
    assert body["url"] == "/items/sub%20dir/100%25%20sine.wav"
    assert body["metadata"] == "sine, test tone. A pure 1 kHz test tone."  # the text it was embedded with
    data = (serve_world.clips / item).read_bytes()
    whole = client.get(body["audio_url"])
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] in ("audio/x-wav", "audio/wav") and whole.headers["accept-ranges"] == "bytes"
    part = client.get(body["audio_url"], headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get(body["audio_url"], headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == data[-64:]
    beyond = client.get(body["audio_url"], headers={"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416
    nameless = _ok(client.get("/items/no%20metadata.wav"))
    assert nameless["tags"] == [] and nameless["description"] == "" and nameless["metadata"] == ""
    hash_name = _ok(client.get("/items/sub%20dir/noise%20%232.wav"))
    assert hash_name["id"] == "sub dir/noise #2.wav" and client.get(hash_name["audio_url"]).content == \
        (serve_world.clips / "sub dir/noise #2.wav").read_bytes()


def _bad_requests(world: ServeWorld) -> list[tuple[str, str, dict, int]]:
    """(method, url, request options, expected status) of requests the API must refuse."""
    absolute = str((world.clips / "whistle.wav").resolve())  # a file of the index, named by path, not id
    big = b"\0" * 400_001
    wave_header = (world.clips / "whistle.wav").read_bytes()[:44]
    return [
        ("GET", "/search", {}, 422),  # no q
        ("GET", "/search?q=", {}, 422),
        ("GET", "/search?q=%20%20", {}, 400),  # only spaces
        ("GET", "/search?q=" + "a" * 501, {}, 422),
        ("GET", "/search?q=rain&top=0", {}, 422),
        ("GET", "/search?q=rain&top=101", {}, 422),
        ("GET", "/search?q=rain&top=ten", {}, 422),
        ("GET", "/items/nothing.wav", {}, 404),
        ("GET", "/items/nothing.wav/audio", {}, 404),
        ("GET", "/items/..%2F..%2F..%2Fetc%2Fpasswd/audio", {}, 404),
        ("GET", "/items/%2e%2e/%2e%2e/%2e%2e/etc/passwd/audio", {}, 404),
        ("GET", "/items/sub%20dir/..%2F..%2Fmetadata.csv/audio", {}, 404),
        ("GET", "/items/%2Fetc%2Fpasswd/audio", {}, 404),
        ("GET", "/items//etc/passwd/audio", {}, 404),
        ("GET", f"/items/{absolute}/audio", {}, 404),
        ("GET", "/items/" + absolute.replace("/", "%2F") + "/audio", {}, 404),
        ("GET", "/items/whistle.wav%00/audio", {}, 404),
        ("GET", "/similar/whistle.wav?condition=key", {}, 400),
        ("GET", "/similar/nothing.wav?condition=tempo", {}, 404),
        ("GET", "/similar/..%2Fmetadata.csv", {}, 404),
        ("GET", "/similar/whistle.wav?top=0", {}, 422),
        ("POST", "/search/audio", {}, 400),  # empty body
        ("POST", "/search/audio", {"content": b"this is not audio"}, 400),
        ("POST", "/search/audio", {"content": wave_header}, 400),  # a header and no samples
        ("POST", "/search/audio", {"content": big}, 413),  # its Content-Length says too big
        ("POST", "/search/audio", {"content": iter([big[:300_000], big[300_000:]])}, 413),  # chunked: counted
        ("POST", "/search/audio", {"content": world.example.read_bytes() * 0 + _long_clip()}, 400),  # over 5 s
        ("POST", "/search/audio?top=-1", {"content": world.example.read_bytes()}, 422),
        ("GET", "/nowhere", {}, 404),
        ("DELETE", "/search?q=rain", {}, 405),
        ("PUT", "/items/whistle.wav", {}, 405),
    ]


def _long_clip() -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000 * 6, dtype=np.float32), 8000, format="WAV", subtype="PCM_16")  # 6 s, 96 kB
    return buffer.getvalue()


def test_every_bad_request_is_a_4xx_json_error(client: TestClient, serve_world: ServeWorld) -> None:
    for method, url, options, status in _bad_requests(serve_world):
        response = client.request(method, url, **options)
        assert response.status_code == status, (method, url, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], (url, body)
        assert "Traceback" not in response.text and "upload-" not in body["error"], (url, body)  # no temp file named


def test_no_similarity_model_missing_audio_and_internal_errors(service: SearchService, serve_world: ServeWorld,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        monkeypatch.setattr(service, "similarity", None)
        response = client.get("/similar/whistle.wav")
        assert response.status_code == 404 and "--similar" in response.json()["error"]
        assert client.get("/health").json()["similar"] is None
        row = service.index.ids.index("whistle.wav")
        paths = list(service.index.paths)
        paths[row] = str(serve_world.root / "gone.wav")
        monkeypatch.setattr(service.index, "paths", paths)
        response = client.get("/items/whistle.wav/audio")
        assert response.status_code == 404 and response.json() == {
            "error": "the audio file of item 'whistle.wav' is missing on the server"}

        def broken(texts):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(service.encoder, "encode", broken)
        response = client.get("/search", params={"q": "rain"})
        assert response.status_code == 500 and response.json() == {"error": "internal error"}


def test_cors_is_off_unless_origins_are_given(service: SearchService) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    with TestClient(create_app(service)) as client:
        response = client.get("/health", headers=origin)
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
        preflight = client.options("/search", headers={**origin, "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers
    with TestClient(create_app(service, ["https://elsewhere.example"])) as client:
        response = client.get("/health", headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://elsewhere.example"
        other = client.get("/health", headers={"Origin": "https://third.example"})
        assert "access-control-allow-origin" not in other.headers


def test_page_schema_and_health(service: SearchService, client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200 and asset in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    schema = _ok(client.get("/openapi.json"))
    assert {"/search", "/search/audio", "/similar/{item}", "/items/{item}", "/items/{item}/audio", "/health"} <= \
        set(schema["paths"])
    assert client.get("/docs").status_code == 404  # FastAPI's docs page loads scripts from a CDN: off
    health = _ok(client.get("/health"))
    assert health["items"] == len(CLIPS) and health["fusion"] == "late" and health["source"] == "audio+metadata"
    assert health["similar"] == {"conditions": ["genre", "mood", "instrument", "tempo", "all"], "items": len(CLIPS)}
    assert health["limits"]["max_top"] == 100


def test_serve_command_line_defaults() -> None:
    args = build_parser().parse_args(["serve", "x.index"])
    assert (args.host, args.port, args.max_batch, args.cors_origin) == ("127.0.0.1", 8000, Limits().max_batch, [])
    for bad in (["--port", "70000"], ["--port", "0"], ["--max-batch", "0"], ["--max-upload-mb", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "x.index", *bad])
