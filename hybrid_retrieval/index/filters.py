"""Which items a search may return: a small filter syntax over the metadata stored beside the vectors.

    tag=rain                 the item has the tag "rain" (its keywords and closed tags; any case)
    name=x/dog.wav           its name (the item id, as `search` prints it) is exactly this
    name~dog                 its name contains "dog" (case-sensitive)
    description~dog          its description contains "dog" (case-sensitive)
    tag=rain,name~night      every clause holds (clauses are separated by commas)

`SearchIndex.search(..., where=ItemFilter.parse("tag=rain"))` returns the top-k items that match:
FAISS and exact search post-filter their candidates, asking for more until k match or none are
left; Milvus evaluates the filter itself (`milvus_expression`), and its answers are checked here
too, so every backend returns the same items.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from hybrid_retrieval.errors import BadInputError

SYNTAX = "FIELD=VALUE or FIELD~TEXT, comma-separated: tag=rain, name=x.wav, name~dog, description~dog"
_OPERATORS = {"tag": ("=",), "name": ("=", "~"), "description": ("~",)}


@dataclass(frozen=True)
class ItemRecord:
    """The metadata of one item that filters read and vector databases store beside its vector."""

    name: str
    tags: tuple[str, ...]  # lower-case
    description: str


def item_tags(metadata: dict) -> tuple[str, ...]:
    """An item's tags: its closed-set tags ("cs") and keywords ("os"), lower-case, each once."""
    tags = [str(tag).strip().lower() for kind in ("cs", "os") for tag in metadata.get(kind) or ()]
    return tuple(dict.fromkeys(tag for tag in tags if tag))


@dataclass(frozen=True)
class Clause:
    field: str  # tag | name | description
    operator: str  # "=" (equals; for tags: has) | "~" (contains)
    value: str

    def matches(self, item: ItemRecord) -> bool:
        if self.field == "tag":
            return self.value in item.tags
        text = item.name if self.field == "name" else item.description
        return text == self.value if self.operator == "=" else self.value in text

    def milvus_expression(self) -> str:
        # json.dumps gives a double-quoted literal with C-style escapes, which Milvus expressions read
        if self.field == "tag":
            return f"array_contains(tags, {json.dumps(self.value)})"
        if self.operator == "=":
            return f"{self.field} == {json.dumps(self.value)}"
        # LIKE: '%' and '_' in the text are wildcards there, so Milvus may return more; the index
        # checks every answer with `matches`
        return f"{self.field} like {json.dumps('%' + self.value + '%')}"


@dataclass(frozen=True)
class ItemFilter:
    clauses: tuple[Clause, ...]
    text: str  # as the user wrote it

    @classmethod
    def parse(cls, text: str) -> ItemFilter:
        """The filter `text` (see the module docstring); BadInputError naming what is wrong."""
        clauses = []
        for part in text.split(","):
            part = part.strip()
            at = min((part.find(op) for op in "=~" if op in part), default=-1)
            field, operator, value = part[:at].strip().lower(), part[at:at + 1], part[at + 1:].strip()
            if at <= 0 or field not in _OPERATORS or not value:
                raise BadInputError(f"filter clause {part!r} of {text!r} is not {SYNTAX}")
            if operator not in _OPERATORS[field]:
                raise BadInputError(f"filter clause {part!r}: {field} takes {' or '.join(_OPERATORS[field])}, "
                                    f"not {operator}")
            clauses.append(Clause(field, operator, value.lower() if field == "tag" else value))
        return cls(tuple(clauses), text)

    def matches(self, item: ItemRecord) -> bool:
        return all(clause.matches(item) for clause in self.clauses)

    def milvus_expression(self) -> str:
        return " and ".join(f"({clause.milvus_expression()})" for clause in self.clauses)


class ItemRecords(Sequence):
    """The `ItemRecord`s of rows start.. of an index's item lists, made when read (a catalogue of
    millions needs no list of them when its backend does not read them)."""

    def __init__(self, names: Sequence[str], tags: Sequence[Sequence[str]], descriptions: Sequence[str],
                 start: int = 0) -> None:
        self.names, self.tags, self.descriptions, self.start = names, tags, descriptions, start

    def __len__(self) -> int:
        return len(self.names) - self.start

    def __getitem__(self, row: int) -> ItemRecord:  # type: ignore[override]  # rows only, no slices
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        row = self.start + row % len(self)
        return ItemRecord(self.names[row], tuple(self.tags[row]), self.descriptions[row])
