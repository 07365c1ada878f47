"""hybrid_retrieval: language-based audio retrieval with audio, text and metadata towers."""
