"""Class index files: the classes a model knows, in its output order, and how the sub-folders of a
class-folder dataset map to them (by ImageNet WordNet id, by name or by index)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from advpatch.errors import SourceError

__all__ = ["ClassIndex", "read_class_index"]


class ClassIndex:
    """A class index file: the classes a model knows, in its output order, with the names a folder
    of a class may have (an ImageNet WordNet id, the class name, its index)."""

    def __init__(self, names: Sequence[str], aliases: Sequence[Sequence[str]], where: str) -> None:
        self.names, self.aliases, self.where = list(names), [tuple(a) for a in aliases], where

    def match(self, folders: Sequence[str], folder: Path) -> List[int]:
        """The class index of each sub-folder name; a clear error naming those that match none."""
        lookup: Dict[str, int] = {}
        for i, names in enumerate(self.aliases):
            for alias in names:
                lookup.setdefault(alias, i)
        unknown = [f for f in folders if f not in lookup]
        if unknown:
            raise SourceError(
                f"class sub-folder(s) {', '.join(repr(u) for u in unknown[:5])} of {folder} match no class in the "
                f"class index {self.where} (a folder is named by WordNet id such as {self.aliases[0][0]!r}, by "
                f"class name or by index 0-{len(self.names) - 1})")
        return [lookup[f] for f in folders]


def read_class_index(path: os.PathLike[str] | str) -> ClassIndex:
    """A class index file: Keras' ``imagenet_class_index.json`` format (``{"0": ["n01440764",
    "tench"], ...}``, any number of classes) or a text file with one class name per line. Names that
    repeat in an ImageNet index (two 'crane's) get their WordNet id added, so every name is unique."""
    import json

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"class index file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read class index file {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            entries = [data[str(i)] for i in range(len(data))]
            ids, names = zip(*[(str(w), str(n)) for w, n in entries])
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"class index file {path} is not in imagenet_class_index.json's format "
                              f'({{"0": ["n01440764", "tench"], ...}}): {e}') from None
        if len(set(ids)) != len(ids):
            raise SourceError(f"class index file {path} lists a class id twice")
        counts = {n: names.count(n) for n in set(names)}
        unique = [n if counts[n] == 1 else f"{n} ({w})" for w, n in zip(ids, names)]
        aliases: List[Tuple[str, ...]] = [(w, u, n, str(i)) for i, (w, u, n) in enumerate(zip(ids, unique, names))]
    else:
        unique = [line.strip() for line in text.splitlines() if line.strip()]
        if len(set(unique)) != len(unique):
            raise SourceError(f"class index file {path} names a class twice")
        aliases = [(n, str(i)) for i, n in enumerate(unique)]
    if len(unique) < 2:
        raise SourceError(f"class index file {path} must name at least 2 classes, got {len(unique)}")
    return ClassIndex(unique, aliases, str(path))
