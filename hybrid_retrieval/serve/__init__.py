"""`hybrid-retrieval serve`: an index behind an HTTP API (FastAPI) and a web page that plays the results.

    limits.py     Limits: the caps on what a request may ask (query length, results, upload size, clip length)
    breakdown.py  how much of a hybrid score came from the audio and how much from the metadata
    batcher.py    QueryBatcher: concurrent requests' texts go through the text tower together
    service.py    SearchService: the index, its models and the similarity model, loaded once; every answer
    app.py        create_app: the routes, the JSON errors, the static page
    cli.py        the `serve` sub-command (cheap to import: the rest is imported when it runs)
    static/       the page: HTML, a little JavaScript and CSS, no build step, nothing from elsewhere

FastAPI and uvicorn come with the `serve` extra (`pip install "hybrid_retrieval[serve]"`).
"""
