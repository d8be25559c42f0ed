"""Claim-check blobs as files in the data dir (the embedded stand-in for a blob container)."""

from __future__ import annotations

from pathlib import Path


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        path = (self._root / name).resolve()
        if self._root.resolve() not in path.parents:
            raise ValueError(f"blob name {name!r} escapes the container")
        return path

    def put(self, name: str, data: bytes) -> str:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return name

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"blob {name}: not found") from None
