"""Signed model packages: export, sign, verify and import on the real store; every unsafe package refused
before anything is deserialized or written to the store."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import bentoml
import pytest

from nids.models.packages import (
    SIGNATURE_FILE,
    PackageRefused,
    PackageTooLarge,
    SigningNotConfigured,
    import_package,
    sign_package,
    verify_package,
    write_package,
)

KEY = b"test-signing-key-0123456789abcdef"
LIMIT = 64 * 1024 * 1024


def store_tags() -> set[str]:
    return {str(model.tag) for model in bentoml.models.list()}


@pytest.fixture
def package(model_store, tmp_path: Path) -> tuple[str, Path]:
    """A signed package of a fresh copy of the threat detector, removed from the store again."""
    from nids.core.features import THREAT_MODEL_NAME

    tag = str(bentoml.models.get(model_store.threat_tag).tag)
    path = tmp_path / "threat.bentomodel"
    with path.open("wb") as out:
        write_package(bentoml.models.get(tag), out, KEY)
    assert tag.startswith(THREAT_MODEL_NAME)
    return tag, path


def rewrite(source: Path, target: Path, edit) -> Path:
    """Copy a package member by member, letting `edit(info, data)` change, drop (None) or add members."""
    with tarfile.open(source, "r:*") as tar, tarfile.open(target, "w:xz") as out:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else None
            for new_info, new_data in edit(info, data):
                out.addfile(new_info, io.BytesIO(new_data) if new_data is not None else None)
    return target


def test_signed_package_imports_as_a_new_inactive_store_entry(package, tmp_path: Path) -> None:
    tag, path = package
    assert verify_package(path, KEY, LIMIT).tag == tag
    bentoml.models.delete(tag)
    try:
        assert import_package(path, KEY, LIMIT, expected_name=tag.split(":")[0]) == tag
        model = bentoml.models.get(tag)
        assert not Path(model.path_of(SIGNATURE_FILE)).exists()
        from nids.models.artifacts import load_model

        assert load_model(tag).tag == tag  # hashes and reference cases still pass after the round trip
    finally:
        if tag not in store_tags():
            import_package(path, KEY, LIMIT)


def test_bentoml_import_reads_a_signed_package(package, tmp_path: Path) -> None:
    """The signed package stays in `bentoml models export` format."""
    tag, path = package
    from bentoml._internal.models.model import Model

    model = Model.import_from(str(path))
    assert str(model.tag) == tag


def test_an_existing_tag_is_a_conflict(package) -> None:
    _tag, path = package
    from nids.core.errors import Conflict

    with pytest.raises(Conflict, match="already in the store"):
        import_package(path, KEY, LIMIT)


def test_without_a_key_uploads_are_refused_saying_how(package) -> None:
    with pytest.raises(SigningNotConfigured, match="NIDS_MODEL_SIGNING_KEY"):
        import_package(package[1], None, LIMIT)


def test_signing_an_unsigned_export(package, tmp_path: Path) -> None:
    tag, _path = package
    unsigned = tmp_path / "plain.bentomodel"
    bentoml.models.export_model(tag, str(unsigned))
    with pytest.raises(PackageRefused, match="unsigned"):
        verify_package(unsigned, KEY, LIMIT)
    signed = tmp_path / "signed.bentomodel"
    assert sign_package(unsigned, signed, KEY, LIMIT) == tag
    assert verify_package(signed, KEY, LIMIT).tag == tag


def _tamper(info: tarfile.TarInfo, data: bytes | None):
    if info.name.endswith("estimator.joblib"):
        data = data[:-1] + bytes([data[-1] ^ 1])
    yield info, data


def _drop_signature(info, data):
    if not info.name.endswith(SIGNATURE_FILE):
        yield info, data


def _resign_with_other_key(info, data):
    if info.name.endswith(SIGNATURE_FILE):
        body = json.loads(data)
        body["signature"] = "0" * 64
        data = json.dumps(body).encode()
        info.size = len(data)
    yield info, data


def _edit_manifest(info, data):
    if info.name.endswith(SIGNATURE_FILE):
        body = json.loads(data)
        body["files"][0]["size"] += 1
        data = json.dumps(body).encode()
        info.size = len(data)
    yield info, data


def _extra(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = ""):
    def edit(info, data):
        yield info, data
        if info.name.endswith("model.yaml"):
            extra = tarfile.TarInfo(name)
            extra.type = kind
            extra.linkname = linkname
            payload = b"x" if kind == tarfile.REGTYPE else None
            extra.size = len(payload or b"")
            yield extra, payload

    return edit


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_tamper, "manifest does not match the package's files: estimator.joblib differs"),
        (_drop_signature, "unsigned"),
        (_resign_with_other_key, "signature does not match"),
        (_edit_manifest, "signature does not match"),
        (_extra("./../escape.txt"), "path traversal"),
        (_extra("/etc/evil"), "absolute path"),
        (_extra("./link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_extra("./hard", tarfile.LNKTYPE, "./model.yaml"), "is a link"),
        (_extra("./dev", tarfile.CHRTYPE), "device"),
        (_extra("./extra.txt"), "extra.txt is not in the manifest"),
        (_extra("./model.yaml"), "'model.yaml' appears twice"),
        (_extra("./fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_unsafe_packages_are_refused_and_the_store_is_unchanged(package, tmp_path: Path, edit, reason) -> None:
    tag, path = package
    bad = rewrite(path, tmp_path / "bad.bentomodel", edit)
    bentoml.models.delete(tag)
    before = store_tags()
    try:
        with pytest.raises(PackageRefused, match=reason):
            import_package(bad, KEY, LIMIT)
        assert store_tags() == before
    finally:
        import_package(path, KEY, LIMIT)


def test_over_the_size_limit(package) -> None:
    with pytest.raises(PackageTooLarge, match="NIDS_MODEL_MAX_PACKAGE_BYTES"):
        import_package(package[1], KEY, 1000)


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bentomodel"
    junk.write_bytes(b"not a tar file at all")
    with pytest.raises(PackageRefused, match="not a tar archive"):
        import_package(junk, KEY, LIMIT)


def test_wrong_model_type(package) -> None:
    tag, path = package
    bentoml.models.delete(tag)
    try:
        with pytest.raises(PackageRefused, match="but model_type is attack_classifier"):
            import_package(path, KEY, LIMIT, expected_name="attack_classifier")
    finally:
        import_package(path, KEY, LIMIT)


def test_the_signature_is_checked_before_anything_is_unpacked(package, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package signed with another key is refused having been read, never written (issue 19)."""
    from nids.models import packages

    written: list[Path] = []
    write = packages._write_member

    def recording(source, path, name):
        if path is not None:
            written.append(path)
        return write(source, path, name)

    monkeypatch.setattr(packages, "_write_member", recording)
    with pytest.raises(PackageRefused, match="signature does not match"):
        import_package(package[1], b"another-key", LIMIT)
    assert written == []
