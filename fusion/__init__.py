"""Item encoders: how a catalogue item's audio and metadata become one embedding.

Select one with `fusion=<name>`; `FUSIONS` lists them. Importing this package registers them.
"""
from fusion import audioset_tags, late, metadata_only, mid, none  # noqa: F401  (register the fusions)
from fusion.base import ItemEncoder
from fusion.registry import FUSIONS, create_fusion, register_fusion

__all__ = ["FUSIONS", "ItemEncoder", "create_fusion", "register_fusion"]
