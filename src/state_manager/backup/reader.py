"""Reading backup files: the manifest, then each table's lines with their checksum and count checked as
they are read (`state-manager backup verify`, and restore, which writes nothing unless every check holds)."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from state_manager.backup.format import MANIFEST_MEMBER, BackupError, Manifest, TableEntry

# Uncompressed bytes read at a time: lines are handed on in blocks of about this size.
BLOCK_BYTES = 4 << 20
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)


class BackupFile:
    """An open backup file. Opening reads the manifest: a file cut short (no ZIP central directory) or
    without a manifest is refused here, before anything else is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError as exc:
            raise BackupError(f"no such file: {path}") from exc
        except IsADirectoryError as exc:
            raise BackupError(f"{path} is a directory") from exc
        except _DAMAGED as exc:
            raise BackupError(f"{path} is not a complete backup file (cut short, or not one): {exc}") from exc
        try:
            self.manifest = Manifest.from_json(self._zip.read(MANIFEST_MEMBER))
        except KeyError as exc:
            self._zip.close()
            raise BackupError(f"{path} holds no {MANIFEST_MEMBER}: not a state-manager backup") from exc
        except (*_DAMAGED, BackupError) as exc:
            self._zip.close()
            raise BackupError(f"{path}: {exc}") from exc

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> BackupFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open(self, entry: TableEntry) -> IO[bytes]:
        try:
            return self._zip.open(entry.member)
        except KeyError as exc:
            raise BackupError(f"{entry.name}: the file lacks its member {entry.member}") from exc

    def blocks(self, entry: TableEntry) -> Iterator[list[bytes]]:
        """The table's lines in blocks; after the last block, raises BackupError unless the SHA-256 and the
        row count equal the manifest's (so the caller's work is undone by its exception)."""
        sha = hashlib.sha256()
        count = 0
        rest = b""
        try:
            with self._open(entry) as stream:
                while data := stream.read(BLOCK_BYTES):
                    sha.update(data)
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    count += len(lines)
                    if lines:
                        yield lines
        except _DAMAGED as exc:
            raise BackupError(f"{entry.name}: the member is damaged ({exc})") from exc
        if rest:
            raise BackupError(f"{entry.name}: the last line is incomplete")
        if sha.hexdigest() != entry.sha256:
            raise BackupError(f"{entry.name}: the SHA-256 of its rows differs from the manifest's")
        if count != entry.rows:
            raise BackupError(f"{entry.name}: {count} rows, the manifest says {entry.rows}")

    async def blocks_async(self, entry: TableEntry) -> AsyncIterator[list[bytes]]:
        """`blocks`, read and decompressed in a worker thread one block ahead of the caller."""
        iterator = self.blocks(entry)
        done = object()

        def step() -> list[bytes] | object:
            return next(iterator, done)

        ahead = asyncio.ensure_future(asyncio.to_thread(step))
        try:
            while (block := await ahead) is not done:
                ahead = asyncio.ensure_future(asyncio.to_thread(step))
                assert isinstance(block, list)
                yield block
        finally:
            if not ahead.done():
                await asyncio.wait([ahead])


@dataclass(frozen=True)
class TableCheck:
    name: str
    rows: int  # what the manifest says
    ok: bool
    problem: str | None


def verify(file: BackupFile) -> list[TableCheck]:
    """Reads every member: checksum, row count, and each line a JSON array of the manifest's columns."""
    checks = []
    for entry in file.manifest.tables.values():
        try:
            for block in file.blocks(entry):
                for line in block:
                    row = orjson.loads(line)
                    if not isinstance(row, list) or len(row) != len(entry.columns):
                        raise BackupError(f"{entry.name}: a line is not a row of {len(entry.columns)} values")
        except (BackupError, orjson.JSONDecodeError) as exc:
            checks.append(TableCheck(entry.name, entry.rows, False, str(exc)))
        else:
            checks.append(TableCheck(entry.name, entry.rows, True, None))
    return checks
