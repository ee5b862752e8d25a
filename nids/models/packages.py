"""Signed model packages: move a model between stores without ever loading an untrusted pickle.

A package is the archive `bentoml models export` writes (a tar of the model's store directory, xz-compressed
as `.bentomodel`; gzip and plain tar are read too) with one more member, `nids-signature.json`:

    {"format": "nids-model-package/1", "algorithm": "hmac-sha256", "tag": "threat_detector:...",
     "files": [{"name": "estimator.joblib", "size": 123, "sha256": "..."}, ...], "signature": "<hex>"}

`signature` is HMAC-SHA256, keyed with NIDS_MODEL_SIGNING_KEY, over the canonical JSON (sorted keys, no spaces)
of every other field. `bentoml models import` still reads a signed package (the extra member is ignored).

`import_package` checks everything before any byte reaches the store, in this order: size of the upload; every
member a plain file or directory with a relative path inside the package (no absolute path, no `..`, no symlink,
hardlink or device, no duplicate); unpacked size; a signature member; the signature; the manifest against the
files read. Only then is `model.yaml` parsed (yaml.safe_load) and the model copied into the store. Nothing in
the package is deserialized here: the pickle is loaded only when a verified model is activated.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import lzma
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import IO, Any

import bentoml

from nids.core.errors import Conflict, InvalidInput, NIDSError, RequestTooLarge
from nids.models.artifacts import latest_kept

SIGNATURE_FILE = "nids-signature.json"
FORMAT = "nids-model-package/1"
ALGORITHM = "hmac-sha256"
MODEL_YAML = "model.yaml"
MAX_SIGNATURE_BYTES = 1024 * 1024
MAX_MEMBERS = 1000  # a model package holds a handful of files
CHUNK = 1024 * 1024
HOW_TO_CONFIGURE = (
    "set NIDS_MODEL_SIGNING_KEY (a long random secret, e.g. `openssl rand -hex 32`) on the service and on the "
    "machine that signs packages"
)


class PackageRefused(InvalidInput):
    """The package is not a signed, well-formed model package; the message names the reason."""


class PackageTooLarge(RequestTooLarge):
    """The package, compressed or unpacked, is over NIDS_MODEL_MAX_PACKAGE_BYTES."""


class SigningNotConfigured(NIDSError):
    """No signing key: packages cannot be signed or accepted."""

    status_code = HTTPStatus.FORBIDDEN

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is refused: no model signing key is configured; {HOW_TO_CONFIGURE}")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature_of(body: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def manifest_body(tag: str, files: list[FileEntry]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "tag": tag,
        "files": [entry.as_dict() for entry in sorted(files, key=lambda e: e.name)],
    }


def _hash_file(path: Path) -> FileEntry:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(name="", size=size, sha256=digest.hexdigest())


def directory_manifest(directory: Path) -> list[FileEntry]:
    """Name (relative, POSIX), size and sha256 of every file under `directory`."""
    entries = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            entry = _hash_file(path)
            entries.append(FileEntry(path.relative_to(directory).as_posix(), entry.size, entry.sha256))
    return entries


def write_package(model: bentoml.Model, out: IO[bytes], key: bytes | None) -> None:
    """The model's directory as `bentoml models export` packs it (xz tar, members `./...`), signed when `key`."""
    root = Path(model.path)
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        tar.add(root, arcname=".", recursive=True, filter=_normalised)
        if key is not None:
            body = manifest_body(str(model.tag), directory_manifest(root))
            _add_bytes(tar, SIGNATURE_FILE, json.dumps({**body, "signature": signature_of(body, key)}, indent=1))


def sign_package(package: Path, out: Path, key: bytes, max_bytes: int) -> str:
    """Sign an existing export (e.g. from `bentoml models export`) after checking its members; returns its tag."""
    with tempfile.TemporaryDirectory(prefix="nids-sign-") as tmp:
        unpacked = _unpack(package, Path(tmp), max_bytes, signature_required=False)
        model = _store_model(unpacked.directory)
        with out.open("wb") as handle:
            write_package(model, handle, key)
        return str(model.tag)


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if info.issym() or info.islnk() or not (info.isfile() or info.isdir()):
        return None  # a model directory has none; never pack one
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(f"./{name}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Unpacked:
    directory: Path
    files: list[FileEntry]
    signature: dict[str, Any] | None


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The member's relative POSIX name ('' for the root), or PackageRefused naming why it is unsafe."""
    raw = member.name
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise PackageRefused(f"package member {raw!r} has an absolute path")
    parts = [part for part in PurePosixPath(raw.replace("\\", "/")).parts if part != "."]
    if ".." in parts:
        raise PackageRefused(f"package member {raw!r} leaves the package (path traversal)")
    if member.issym() or member.islnk():
        raise PackageRefused(f"package member {raw!r} is a link; packages hold plain files only")
    if member.ischr() or member.isblk() or member.isfifo():
        raise PackageRefused(f"package member {raw!r} is a device or FIFO; packages hold plain files only")
    if not (member.isfile() or member.isdir()):
        raise PackageRefused(f"package member {raw!r} is not a plain file or directory")
    return "/".join(parts)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        while (member := tar.next()) is not None:
            yield member
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as exc:
        raise PackageRefused(f"the package is not a readable tar archive ({type(exc).__name__}: {exc})") from exc


def _unpack(package: Path, target: Path | None, max_bytes: int, *, signature_required: bool = True) -> Unpacked:
    """Check every member and write the files (never the signature) under `target`; with no target, only read and
    hash them (to check the signature before anything is written)."""
    size = package.stat().st_size
    if size > max_bytes:
        raise PackageTooLarge(f"the package has {size} bytes; the limit is {max_bytes} (NIDS_MODEL_MAX_PACKAGE_BYTES)")
    try:
        tar = tarfile.open(package, mode="r:*")  # noqa: SIM115 (closed by the `with tar` below)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as exc:
        raise PackageRefused(
            f"the package is not a tar archive as `bentoml models export` writes ({type(exc).__name__})"
        ) from exc
    files: list[FileEntry] = []
    seen: set[str] = set()
    signature: bytes | None = None
    unpacked = 0
    with tar:
        for member in _members(tar):
            name = _member_name(member)
            if not name:
                continue
            if name in seen:
                raise PackageRefused(f"package member {name!r} appears twice")
            seen.add(name)
            if len(seen) > MAX_MEMBERS:
                raise PackageRefused(f"the package has more than {MAX_MEMBERS} members")
            if member.isdir():
                continue
            unpacked += member.size
            if unpacked > max_bytes:
                raise PackageTooLarge(
                    f"the package unpacks to more than {max_bytes} bytes (NIDS_MODEL_MAX_PACKAGE_BYTES)"
                )
            source = tar.extractfile(member)
            if source is None:
                raise PackageRefused(f"package member {name!r} cannot be read")
            if name == SIGNATURE_FILE:
                if member.size > MAX_SIGNATURE_BYTES:
                    raise PackageRefused(f"{SIGNATURE_FILE} is over {MAX_SIGNATURE_BYTES} bytes")
                signature = source.read()
                continue
            files.append(_write_member(source, target / name if target is not None else None, name))
    if signature is None and signature_required:
        raise PackageRefused(
            f"the package is unsigned: it has no {SIGNATURE_FILE} (sign it with `python -m nids.models.cli sign`)"
        )
    return Unpacked(directory=target or Path(), files=files, signature=None if signature is None else _parse(signature))


def _write_member(source: IO[bytes], path: Path | None, name: str) -> FileEntry:
    digest, size = hashlib.sha256(), 0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("wb") if path is not None else contextlib.nullcontext() as sink:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink.write(chunk)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise PackageRefused(f"package member {name!r} is truncated or corrupt ({exc})") from exc
    return FileEntry(name=name, size=size, sha256=digest.hexdigest())


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        signature = json.loads(raw)
    except ValueError as exc:
        raise PackageRefused(f"{SIGNATURE_FILE} is not JSON ({exc})") from exc
    if not isinstance(signature, dict) or not isinstance(signature.get("signature"), str):
        raise PackageRefused(f"{SIGNATURE_FILE} has no signature field")
    if signature.get("format") != FORMAT or signature.get("algorithm") != ALGORITHM:
        raise PackageRefused(f"{SIGNATURE_FILE} must declare format {FORMAT!r} and algorithm {ALGORITHM!r}")
    return signature


def _check_signature(unpacked: Unpacked, key: bytes) -> str:
    """The signed tag, once the signature and the manifest match the files read."""
    signed = dict(unpacked.signature or {})
    claimed = str(signed.pop("signature"))
    if not hmac.compare_digest(signature_of(signed, key), claimed):
        raise PackageRefused(
            "the package signature does not match: signed with another key, or the manifest was edited"
        )
    try:
        manifest = {entry["name"]: (int(entry["size"]), str(entry["sha256"])) for entry in signed["files"]}
        tag = str(signed["tag"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageRefused(f"{SIGNATURE_FILE} has a malformed manifest ({exc})") from exc
    actual = {entry.name: (entry.size, entry.sha256) for entry in unpacked.files}
    problems = [f"{name} is not in the manifest" for name in sorted(set(actual) - set(manifest))]
    problems += [f"{name} is missing" for name in sorted(set(manifest) - set(actual))]
    problems += [f"{name} differs" for name in sorted(set(actual) & set(manifest)) if actual[name] != manifest[name]]
    if problems:
        raise PackageRefused(f"the manifest does not match the package's files: {'; '.join(problems)}")
    return tag


def _store_model(directory: Path) -> bentoml.Model:
    if not (directory / MODEL_YAML).is_file():
        raise PackageRefused(f"the package has no {MODEL_YAML}: it is not a BentoML model export")
    try:
        return bentoml.Model.from_path(directory)
    except Exception as exc:  # BentoML and YAML errors alike: the package is not a model export
        raise PackageRefused(f"the package's {MODEL_YAML} is not a BentoML model description ({exc})") from exc


@dataclass(frozen=True)
class Verified:
    tag: str
    files: list[FileEntry]


def verify_package(package: Path, key: bytes | None, max_bytes: int) -> Verified:
    """Check a package without touching the store (the CLI's `verify`)."""
    if key is None:
        raise SigningNotConfigured("verifying a model package")
    with tempfile.TemporaryDirectory(prefix="nids-verify-") as tmp:
        unpacked = _unpack(package, Path(tmp), max_bytes)
        tag = _check_signature(unpacked, key)
        model = _store_model(unpacked.directory)
        if str(model.tag) != tag:
            raise PackageRefused(f"the package's model.yaml names {model.tag}, its signature {tag}")
        return Verified(tag=tag, files=unpacked.files)


def package_bytes(model: bentoml.Model, key: bytes) -> bytes:
    """The signed package of a stored model, in memory (what the shared package store keeps)."""
    buffer = io.BytesIO()
    write_package(model, buffer, key)
    return buffer.getvalue()


def import_package(package: Path, key: bytes | None, max_bytes: int, expected_name: str | None = None) -> str:
    """Verify a package and copy its model into the BentoML store; returns the new tag (never activated, and
    `name:latest` is left where it was: only an activation changes what a process starting afresh serves).

    PackageRefused / PackageTooLarge (4xx) name what is wrong; nothing is written to the store then. Conflict (409)
    when the tag is already in the store.
    """
    if key is None:
        raise SigningNotConfigured("a model upload or import")
    _check_signature(_unpack(package, None, max_bytes), key)  # the bytes received are signed: only then unpack
    with tempfile.TemporaryDirectory(prefix="nids-import-") as tmp:
        unpacked = _unpack(package, Path(tmp) / "model", max_bytes)
        tag = _check_signature(unpacked, key)  # what was written is what was signed
        model = _store_model(unpacked.directory)
        if str(model.tag) != tag:
            raise PackageRefused(f"the package's model.yaml names {model.tag}, its signature {tag}")
        if expected_name is not None and model.tag.name != expected_name:
            raise PackageRefused(f"the package holds a {model.tag.name} model, but model_type is {expected_name}")
        try:
            with latest_kept(model.tag.name):  # BentoML would move `name:latest` to a newer save
                model.save()  # the store refuses a tag it holds, even one a concurrent upload just added
        except bentoml.exceptions.BentoMLException as exc:
            if any(str(stored.tag) == tag for stored in bentoml.models.list(model.tag.name)):
                raise Conflict(f"model {tag} is already in the store") from exc
            raise PackageRefused(f"the store refused {tag}: {exc}") from exc
        return tag
