"""DIRAC data management for payloads: the File Catalog (DFC) and DIP storage elements, over
DISET, without DIRAC installed.

Input (``InputData``, ``LFN:`` input sandbox entries)::

    FileCatalog.getReplicas([lfn], False)      -> {"Successful": {lfn: {SE: PFN-or-""}}}
    FileCatalog.getFileMetadata([lfn])         -> size and Adler-32 checksum
    StorageElement FileTransfer/ToClient [<SE URL><lfn>, token]   from the first SE that works
    size and Adler-32 of what arrived checked against the catalogue

Output (``OutputData``), in the order DIRAC's own ``dirac-dms-add-file`` does it::

    StorageElement FileTransfer/FromClient [<SE URL><lfn>, "CheckSum", size]
    StorageElement.getMetadata(<SE URL><lfn>)  -> Size and Checksum computed by the SE: compared
    FileCatalog.addFile({lfn: {PFN, Size, SE, Checksum, ChecksumType, GUID}})
    a copy whose checksum differs, or that the catalogue refuses, is removed from the SE again;
    when addFile's answer is lost, the catalogue is asked whether it registered the file.
    An LFN already registered (a rerun of a job killed after addFile) is not uploaded again:
    the same size and checksum is done, other content is refused before the SE is touched

Storage elements are ``DIP`` endpoints (``dips://host:port/DataManagement/StorageElement``).
Where they are comes from ``[dirac.storage_elements]`` (name = URL) when given, else from
DIRAC's configuration (``/Resources/StorageElements/<SE>/DIP``: Host, Port, Path). Because
DIRAC's StorageElement service follows ``..`` in file ids, an LFN is only used after
:func:`check_lfn` accepted it.
"""

from __future__ import annotations

import logging
import re
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pilot.backends.base import InputKind, classify, lfn_path
from pilot.backends.dirac import cscfg
from pilot.backends.dirac.diset import DisetClient, DisetError
from pilot.errors import SandboxError, ServerUnreachable, write_error

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_LFN_PART = re.compile(r"[A-Za-z0-9_.+=@,:~%-]+")


Registration = Literal["absent", "same", "other"]  # an LFN in the catalogue vs our file


class DataError(SandboxError):
    """A data management operation failed; the message says which file and why."""


def check_lfn(lfn: str) -> str:
    """``LFN:/vo/a/b`` or ``/vo/a/b`` -> ``/vo/a/b``; refuses anything that could leave the
    storage element's base directory (``..``, ``.``, empty parts, odd characters)."""
    path = lfn_path(lfn)
    parts = path.split("/")
    if (
        not path.startswith("/")
        or len(path) > 1024
        or any(p in ("", ".", "..") or not _LFN_PART.fullmatch(p) for p in parts[1:])
    ):
        raise DataError(f"not a usable LFN: {lfn!r}")
    return path


def adler32(path: Path) -> str:
    """Adler-32 of a file as DIRAC writes it: 8 lower-case hex digits."""
    value = 1
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def size_of(value: Any) -> int | None:
    """A file size as DIRAC sends it (an int, or digits in a string); None for nonsense."""
    if isinstance(value, bool):
        return None
    try:
        size = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return size if size >= 0 else None


def same_checksum(a: object, b: object) -> bool:
    """Adler-32 values compared as numbers (DIRAC drops leading zeros in places)."""
    try:
        return int(str(a), 16) == int(str(b), 16)
    except ValueError:
        return False


@dataclass(frozen=True)
class StorageElement:
    name: str
    url: str  # dips://host:port/DataManagement/StorageElement

    def file_id(self, lfn: str) -> str:
        return self.url.rstrip("/") + check_lfn(lfn)


def storage_elements_from_cs(cfg: cscfg.Section) -> dict[str, StorageElement]:
    """The DIP storage elements DIRAC's configuration defines."""
    found = {}
    section = cfg.find("/Resources/StorageElements")
    for name, se in (section.sections if section else {}).items():
        dip = se.sections.get("DIP")
        if dip is None:
            continue
        host, port = dip.options.get("Host"), dip.options.get("Port")
        path = dip.options.get("Path", "/DataManagement/StorageElement")
        if dip.options.get("Protocol", "dips") != "dips" or not host or not port:
            continue
        found[name] = StorageElement(name, f"dips://{host}:{port}/{path.strip('/')}")
    return found


class DataManager:
    """The File Catalog and storage elements, as one job needs them."""

    def __init__(
        self,
        catalog: DisetClient,
        storage_elements: Mapping[str, StorageElement],
        client: Callable[[str], DisetClient],
    ) -> None:
        self.catalog = catalog
        self.storage_elements = dict(storage_elements)
        self._client = client

    def _se(self, name: str) -> StorageElement:
        se = self.storage_elements.get(name)
        if se is None:
            raise DataError(f"storage element {name} is not a known DIP storage element")
        return se

    def _catalog(self, method: str, arg: Any, lfn: str) -> Any:
        """One catalogue call about ``lfn``; its entry in Successful, or DataError."""
        try:
            reply = self.catalog.call(method, arg, *(() if method != "getReplicas" else (False,)))
        except ServerUnreachable as exc:
            raise DataError(f"{lfn}: file catalogue unreachable: {exc}") from exc
        except DisetError as exc:
            raise DataError(f"{lfn}: file catalogue: {exc}") from exc
        if not isinstance(reply, dict):
            raise DataError(f"{lfn}: file catalogue {method}: unexpected answer")
        failed = reply.get("Failed") or {}
        if lfn in failed:
            raise DataError(f"{lfn}: {failed[lfn]}")
        value = (reply.get("Successful") or {}).get(lfn)
        if value is None:
            raise DataError(f"{lfn}: not in the file catalogue")
        return value

    # -- input -----------------------------------------------------------------------------

    def download(self, lfn: str, dest: Path) -> str:
        """Fetch ``lfn`` from the first storage element holding a good replica; its name."""
        path = check_lfn(lfn)
        replicas = self._catalog("getReplicas", [path], path)
        metadata = self._catalog("getFileMetadata", [path], path)
        if not isinstance(replicas, dict) or not replicas:
            raise DataError(f"{path}: no replica")
        if not isinstance(metadata, dict):
            raise DataError(f"{path}: file catalogue getFileMetadata: unexpected answer")
        want_size = metadata.get("Size")
        if want_size is not None and size_of(want_size) is None:
            raise DataError(f"{path}: the file catalogue gives no usable size ({want_size!r:.40})")
        errors = []
        for name in replicas:
            try:  # a local write error is raised as it is: another replica would not help
                self._download_from(self._se(name), path, dest, metadata)
                return str(name)
            except (DataError, DisetError) as exc:
                log.warning("replica of %s at %s unusable: %s", path, name, exc)
                errors.append(f"{name}: {exc}")
        raise DataError(f"{path}: no replica could be fetched ({'; '.join(errors)})")

    def _download_from(
        self, se: StorageElement, lfn: str, dest: Path, metadata: Mapping[str, Any]
    ) -> None:
        part = dest.with_name(dest.name + ".part")
        try:
            size = self._client(se.url).receive_file(se.file_id(lfn), part, token="CheckSum")
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise write_error(exc, dest) from exc
        want_size, want_sum = metadata.get("Size"), metadata.get("Checksum")
        if want_size is not None and size_of(want_size) != size:
            part.unlink(missing_ok=True)
            raise DataError(f"{size} bytes arrived, the catalogue says {want_size}")
        got = adler32(part) if want_sum else ""
        if want_sum and not same_checksum(got, want_sum):
            part.unlink(missing_ok=True)
            raise DataError(f"Adler-32 {got} differs from the catalogue's {want_sum}")
        part.replace(dest)
        log.info("input data %s: %d bytes from %s, checksum verified", lfn, size, se.name)

    # -- output ----------------------------------------------------------------------------

    def upload(self, source: Path, lfn: str, se_name: str) -> dict[str, Any]:
        """Store ``source`` at ``se_name`` and register it as ``lfn``; what was registered."""
        path = check_lfn(lfn)
        se = self._se(se_name)
        file_id = se.file_id(path)
        try:
            size = source.stat().st_size
            checksum = adler32(source)
        except OSError as exc:
            raise DataError(f"{path}: cannot read {source}: {exc.strerror}") from exc
        before = self._lookup(path, size, checksum)  # a rerun of a job killed after addFile
        if before == "same":
            log.info("output data %s: already registered with the same content", path)
            return {"Size": size, "Checksum": checksum, "ChecksumType": "Adler32"}
        if before == "other":  # its copy has our file id: uploading would overwrite it
            raise DataError(f"{path}: already in the file catalogue with other content")
        storage = self._client(se.url)
        try:
            storage.send_file(file_id, source, token="CheckSum")
            stored = storage.call("getMetadata", file_id)
        except (DisetError, OSError) as exc:
            self._remove(storage, file_id)
            raise DataError(f"{path}: upload to {se.name} failed: {exc}") from exc
        if not isinstance(stored, dict) or size_of(stored.get("Size")) != size:
            self._remove(storage, file_id)
            raise DataError(f"{path}: {se.name} holds a copy of another size: {stored!r:.100}")
        if not same_checksum(stored.get("Checksum"), checksum):
            self._remove(storage, file_id)
            raise DataError(f"{path}: {se.name} computed another Adler-32 than ours ({checksum})")
        entry = {
            "PFN": file_id,
            "Size": size,
            "SE": se.name,
            "Checksum": checksum,
            "ChecksumType": "Adler32",
            "GUID": str(uuid.uuid4()).upper(),
        }
        try:
            self._catalog("addFile", {path: entry}, path)
        except DataError as exc:
            lost = isinstance(exc.__cause__, ServerUnreachable)  # registered or not?
            after = self._lookup(path, size, checksum) if lost else "absent"
            if after == "absent":
                self._remove(storage, file_id)  # no copy nobody knows of
                raise
            if after != "same":  # a copy nobody knows of beats an entry without a copy
                raise DataError(f"{exc}; the copy at {se.name} is kept") from exc
            log.warning("%s: registered although the catalogue's answer was lost", path)
        log.info(
            "output data %s: %d bytes at %s, registered (Adler-32 %s)",
            path,
            size,
            se.name,
            checksum,
        )
        return entry

    def _lookup(self, path: str, size: int, checksum: str) -> Registration | None:
        """What the catalogue holds at ``path`` compared with our file (None: cannot tell)."""
        try:
            reply = self.catalog.call("getFileMetadata", [path])
        except DisetError:
            return None
        if not isinstance(reply, dict):
            return None
        found = (reply.get("Successful") or {}).get(path)
        if isinstance(found, dict):
            same = size_of(found.get("Size")) == size
            return "same" if same and same_checksum(found.get("Checksum"), checksum) else "other"
        return "absent" if path in (reply.get("Failed") or {}) else None

    @staticmethod
    def _remove(storage: DisetClient, file_id: str) -> None:
        try:
            storage.call("remove", file_id, "")
        except DisetError as exc:
            log.warning("could not remove %s again: %s", file_id, exc)


def user_lfn(vo: str, owner: str, job_id: str, output_path: str | None, name: str) -> str:
    """Where DIRAC's JobWrapper puts an OutputData file that is not an LFN itself:
    ``/<vo>/user/<initial>/<owner>/<OutputPath or jobid//1000/jobid>/<name>``; an
    ``OutputPath`` that starts with ``LFN:`` is absolute."""
    base = f"/{vo}/user/{owner[:1]}/{owner}"
    if output_path:
        if classify(output_path) is InputKind.LFN:
            base, rel = "", lfn_path(output_path)
        else:
            rel = output_path.lstrip("/")
    else:
        rel = f"{int(job_id) // 1000}/{job_id}" if job_id.isdigit() else job_id
    return check_lfn(f"{base}/{rel.strip('/')}/{name}".replace("//", "/"))
