"""Uploaded files of the mounted routes: copied to disk in chunks, never past their limit."""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

from nids.core.errors import RequestTooLarge

CHUNK = 1024 * 1024


def save_upload(file: UploadFile, target: Path, limit: int, setting: str) -> Path:
    """Write the upload to `target`; RequestTooLarge (413) naming `setting` once it passes `limit` bytes."""
    written = 0
    with target.open("wb") as sink:
        while chunk := file.file.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise RequestTooLarge(f"the uploaded file is over {limit} bytes ({setting})")
            sink.write(chunk)
    return target
