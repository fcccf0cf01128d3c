"""DIRAC data management against a scripted File Catalog and storage element: what the
pilot does when an answer is lost, a server says nonsense, or the local disk is full
(the real services are exercised in test_dirac_data.py)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import pytest

from pilot.backends.base import MatchedJob
from pilot.backends.dirac import data
from pilot.backends.dirac.diset import DisetClient, DisetUnreachable
from pilot.errors import DiskFullError, SandboxError
from pilot.job import jdl, sandbox
from pilot.job.archive import UnpackLimits

LFN = "/testvo/user/t/testuser/out/result.txt"
SE_URL = "dips://se.example:9148/DataManagement/StorageElement"


class Service:
    """A DISET service whose methods are Python callables; it records every call."""

    def __init__(self, **methods: Callable[..., Any]) -> None:
        self.methods = methods
        self.calls: list[str] = []
        self.files: dict[str, bytes] = {}

    def call(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        return self.methods[method](*args)

    def send_file(self, file_id: str, source: Path, token: str = "") -> None:
        self.calls.append("send_file")
        self.files[file_id] = source.read_bytes()

    def receive_file(self, file_id: str, sink: Path | IO[bytes], token: str = "") -> int:
        self.calls.append("receive_file")
        return cast(int, self.methods["receive_file"](file_id, sink))


def manager(catalog: Service, se: Service) -> data.DataManager:
    element = data.StorageElement("SE-LOCAL", SE_URL)
    return data.DataManager(
        cast(DisetClient, catalog), {"SE-LOCAL": element}, lambda url: cast(DisetClient, se)
    )


def absent(lfns: list[str]) -> Any:
    return {"Successful": {}, "Failed": {lfn: "No such file or directory" for lfn in lfns}}


def catalogue(**methods: Callable[..., Any]) -> Service:
    """A File Catalog where every LFN is absent unless ``methods`` say otherwise."""
    return Service(**{"getFileMetadata": absent, **methods})


def storage_element() -> Service:
    se = Service(remove=lambda file_id, _: None)
    se.methods["getMetadata"] = lambda file_id: {
        "Size": len(se.files[file_id]),
        "Checksum": adler32_of(se.files[file_id]),
    }
    return se


def adler32_of(content: bytes) -> str:
    import zlib

    return f"{zlib.adler32(content) & 0xFFFFFFFF:08x}"


def lost_reply(*args: Any) -> Any:
    raise DisetUnreachable("FileCatalog: timed out waiting for the reply")


def output(tmp_path: Path) -> Path:
    source = tmp_path / "result.txt"
    source.write_bytes(b"result of the payload\n")
    return source


def test_add_file_answer_lost_but_registered_is_a_success(tmp_path: Path) -> None:
    """The catalogue registered the file and its answer was lost: the copy at the SE is
    what the entry points to, so it must stay, and the upload counts as done."""
    source = output(tmp_path)
    registered: dict[str, Any] = {}

    def add_file(entries: dict[str, Any]) -> Any:
        registered.update(entries)
        raise DisetUnreachable("FileCatalog: receiving the reply failed")

    def metadata(lfns: list[str]) -> Any:
        if not registered:
            return absent(lfns)
        return {"Successful": {lfn: registered[lfn] for lfn in lfns}}

    catalog = catalogue(addFile=add_file, getFileMetadata=metadata)
    se = storage_element()
    entry = manager(catalog, se).upload(source, "LFN:" + LFN, "SE-LOCAL")
    assert entry["Size"] == source.stat().st_size
    assert "remove" not in se.calls and se.files[SE_URL + LFN] == source.read_bytes()


def test_add_file_answer_lost_and_not_registered_removes_the_copy(tmp_path: Path) -> None:
    catalog = catalogue(addFile=lost_reply)
    se = storage_element()
    with pytest.raises(data.DataError, match="timed out"):
        manager(catalog, se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert se.calls[-1] == "remove"


def test_add_file_answer_lost_and_catalogue_gone_keeps_the_copy(tmp_path: Path) -> None:
    """Unknown whether it is registered: an entry without its copy would be worse than a
    copy nobody knows of (a rerun writes the same file id again)."""
    catalog = Service(addFile=lost_reply, getFileMetadata=lost_reply)
    se = storage_element()
    with pytest.raises(data.DataError, match="the copy at SE-LOCAL is kept"):
        manager(catalog, se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert "remove" not in se.calls


def test_an_lfn_registered_by_an_earlier_run_is_not_uploaded_again(tmp_path: Path) -> None:
    """A rerun of a job whose pilot was killed after addFile: the same content is done;
    other content is refused before the copy the entry points to is overwritten."""
    source = output(tmp_path)
    mine = {"Size": source.stat().st_size, "Checksum": adler32_of(source.read_bytes())}
    for held, error in [(mine, None), ({**mine, "Checksum": "1"}, "other content")]:
        catalog = catalogue(getFileMetadata=lambda lfns, held=held: {"Successful": {LFN: held}})
        se = storage_element()
        if error is None:
            manager(catalog, se).upload(source, LFN, "SE-LOCAL")
        else:
            with pytest.raises(data.DataError, match=error):
                manager(catalog, se).upload(source, LFN, "SE-LOCAL")
        assert se.calls == [] and catalog.calls == ["getFileMetadata"]


def test_add_file_refused_removes_the_copy(tmp_path: Path) -> None:
    catalog = catalogue(addFile=lambda entries: {"Successful": {}, "Failed": {LFN: "denied"}})
    se = storage_element()
    with pytest.raises(data.DataError, match="denied"):
        manager(catalog, se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert se.calls[-1] == "remove" and catalog.calls == ["getFileMetadata", "addFile"]


def test_an_output_file_that_cannot_be_read_is_a_data_error(tmp_path: Path) -> None:
    catalog, se = catalogue(), storage_element()
    with pytest.raises(data.DataError, match="cannot read"):
        manager(catalog, se).upload(tmp_path / "vanished.txt", LFN, "SE-LOCAL")
    assert se.calls == [] and catalog.calls == []


@pytest.mark.parametrize("size", ["12x", None, -1, float("nan"), True, [3]])
def test_nonsense_sizes_from_the_storage_element_are_data_errors(tmp_path: Path, size: Any) -> None:
    se = storage_element()
    se.methods["getMetadata"] = lambda file_id: {"Size": size, "Checksum": "0"}
    with pytest.raises(data.DataError, match="another size"):
        manager(catalogue(), se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert se.calls[-1] == "remove"


def replicas_of(metadata: Any) -> Service:
    return Service(
        getReplicas=lambda lfns, _: {"Successful": {LFN: {"SE-LOCAL": ""}}},
        getFileMetadata=lambda lfns: {"Successful": {LFN: metadata}},
    )


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"Size": "lots", "Checksum": "1"}, "no usable size"),
        ({"Size": float("inf")}, "no usable size"),
        ("not a dict", "unexpected answer"),
    ],
)
def test_nonsense_catalogue_metadata_is_a_data_error(
    tmp_path: Path, metadata: Any, match: str
) -> None:
    se = Service(receive_file=lambda file_id, sink: 0)
    with pytest.raises(data.DataError, match=match):
        manager(replicas_of(metadata), se).download(LFN, tmp_path / "in.txt")
    assert "receive_file" not in se.calls


@pytest.mark.parametrize(
    ("code", "error"), [(errno.ENOSPC, DiskFullError), (errno.EACCES, SandboxError)]
)
def test_a_local_write_error_stops_at_once(
    tmp_path: Path, code: int, error: type[SandboxError]
) -> None:
    """No space (or no permission) in the job directory: another replica would not help,
    and the disk-full error keeps its own exit code."""

    def receive(file_id: str, sink: Path) -> int:
        raise OSError(code, "write failed", str(sink))

    se = Service(receive_file=receive)
    catalog = replicas_of({"Size": 3})
    catalog.methods["getReplicas"] = lambda lfns, _: {
        "Successful": {LFN: {"SE-LOCAL": "", "SE-OTHER": ""}}
    }
    with pytest.raises(error) as info:
        manager(catalog, se).download(LFN, tmp_path / "in.txt")
    assert not isinstance(info.value, data.DataError) and se.calls == ["receive_file"]
    assert not (tmp_path / "in.txt.part").exists()


def no_url(url: str, dest: Path) -> None:
    raise AssertionError(f"no URL input expected: {url}")


def test_an_input_whose_checksum_differs_from_the_catalogue_is_refused(tmp_path: Path) -> None:
    """The right number of bytes arrived but not the catalogue's bytes: no file is left
    (neither the target nor its part file), and staging fails with DIRAC's input data
    status naming the LFN and both checksums."""
    content = b"the catalogue's bytes\n"
    wrong = b"the catalogue's bytez\n"  # same size, another Adler-32

    def receive(file_id: str, sink: Path) -> int:
        sink.write_bytes(wrong)
        return len(wrong)

    catalog = replicas_of({"Size": len(content), "Checksum": adler32_of(content)})
    se = Service(receive_file=receive)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    desc = jdl.load(f'[Executable = "x"; InputData = {{"LFN:{LFN}"}};]')

    class Backend:  # the DIRAC backend's fetch_lfn, on the scripted services
        def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
            manager(catalog, se).download(lfn, dest)

    with pytest.raises(SandboxError) as info:
        sandbox.stage_in(
            cast(Any, Backend()), MatchedJob("7", "[]"), desc, job_dir, UnpackLimits(), no_url
        )
    text = str(info.value)
    assert text.startswith(f"{sandbox.INPUT_DATA_FAILED}: {LFN}: no replica could be fetched")
    assert f"Adler-32 {adler32_of(wrong)} differs" in text and adler32_of(content) in text
    assert list(job_dir.iterdir()) == [] and se.calls == ["receive_file"]


def test_an_input_whose_checksum_matches_is_kept(tmp_path: Path) -> None:
    """The same path with the right bytes: the file is there (the refusal above is the
    checksum's doing, not the fake's)."""
    content = b"the catalogue's bytes\n"

    def receive(file_id: str, sink: Path) -> int:
        sink.write_bytes(content)
        return len(content)

    catalog = replicas_of({"Size": len(content), "Checksum": adler32_of(content).lstrip("0")})
    assert manager(catalog, Service(receive_file=receive)).download(LFN, tmp_path / "in.txt")
    assert (tmp_path / "in.txt").read_bytes() == content


@pytest.mark.parametrize(
    "stored",
    [
        lambda se: {"Size": len(se.files[SE_URL + LFN]), "Checksum": "deadbeef"},
        lambda se: {"Size": len(se.files[SE_URL + LFN]) - 1, "Checksum": "0"},  # half a file
    ],
    ids=["other-adler32", "half-file"],
)
def test_a_copy_that_differs_after_upload_is_removed_and_not_registered(
    tmp_path: Path, stored: Callable[[Service], Any]
) -> None:
    """The copy was made but the storage element holds other bytes (another Adler-32, or a
    truncated file): it is removed again and addFile is never called."""
    catalog = catalogue(addFile=lambda entries: pytest.fail("registered a bad copy"))
    se = storage_element()
    se.methods["getMetadata"] = lambda file_id: stored(se)
    se.methods["remove"] = lambda file_id, _: se.files.pop(file_id)
    with pytest.raises(data.DataError, match="another"):
        manager(catalog, se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert se.calls == ["send_file", "getMetadata", "remove"] and se.files == {}
    assert "addFile" not in catalog.calls


def test_a_transfer_that_breaks_midway_removes_the_half_copy(tmp_path: Path) -> None:
    """The storage element received part of the file, then the connection broke: the part
    is removed, nothing is registered."""
    catalog = catalogue(addFile=lambda entries: pytest.fail("registered a half file"))
    se = storage_element()
    se.methods["remove"] = lambda file_id, _: se.files.pop(file_id)

    def send_half(file_id: str, source: Path, token: str = "") -> None:
        se.calls.append("send_file")
        se.files[file_id] = source.read_bytes()[:5]
        raise DisetUnreachable("StorageElement: connection reset while sending")

    se.send_file = send_half  # type: ignore[method-assign]
    with pytest.raises(data.DataError, match="upload to SE-LOCAL failed"):
        manager(catalog, se).upload(output(tmp_path), LFN, "SE-LOCAL")
    assert se.calls == ["send_file", "remove"] and se.files == {}
    assert "addFile" not in catalog.calls
