"""What one request may ask of the service (the CLI's defaults; the app refuses more with a 4xx)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 500  # a text query longer than this is refused (the text tower reads its first word pieces only)
    max_top: int = 100  # results per request
    max_upload_bytes: int = 20 * 1024 * 1024  # an example clip's file
    max_clip_seconds: float = 120.0  # an example clip's length (a small file can hold hours of silence)
    max_batch: int = 32  # text queries encoded together (1: one at a time)
