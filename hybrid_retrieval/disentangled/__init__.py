"""Disentangled multidimensional music similarity (Lee, Bryan, Salamon, Jin & Nam, ICASSP 2020).

One embedding whose masked subspaces each hold one notion of "similar" (genre, mood, instrument,
tempo by default), trained with a triplet loss per condition and track regularization.

    model.py        CSNConfig, ConditionalSimilarityNet (masks, heads), embed_tracks
    conditions.py   labels, the tempo tolerance, estimate_tempo (beat tracking)
    features.py     frozen-tower tokens or log-mels per track; cutting segments (overlap rule)
    losses.py       the pytorch-metric-learning triplet terms and their weighted sum
    training.py     CSNTrainConfig, fit, train_disentangled (scripts/train_disentangled.py)
    evaluation.py   held-out triplets and triplet accuracy per condition
    benchmark.py    run_triplet_benchmark: the four named configs (scripts/eval_triplets.py)
    checkpoint.py   save_model / load_model (safetensors + JSON), the default model's path
    search.py       SimilaritySearch, Catalogue: querying per condition
    cli.py          `hybrid-retrieval similar`

Modules are imported where used, so registering the CLI command stays cheap.
"""
