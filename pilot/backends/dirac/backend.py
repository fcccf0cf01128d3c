"""The agent's :class:`pilot.backends.base.Backend` on DIRAC's WMS services, over DISET.

=====================  ============================================================
Backend call           DIRAC service call
=====================  ============================================================
register               PilotManager.setPilotStatus(ref, "Running", CE, reason, site,
                       queue) when a PilotManager URL is set (pilots may call only
                       that method; it updates a reference a SiteDirector created)
match                  Matcher.requestJob(resourceDescription); Errno 1510 = no match
set_status             JobStateUpdate.setJobStatusBulk(job, {time: {Status, ...}}),
                       setJobApplicationStatus for an application status alone;
                       ``extra`` goes to setJobParameters (best effort)
heartbeat              JobStateUpdate.sendHeartBeat(job, dynamic, {}) -> {command: arg}
fetch_input_sandbox    SandboxStore FileTransfer/ToClient of each ``SB:<SE>|<path>``
store_output_sandbox   SandboxStore FileTransfer/FromClient ``[<md5>.tar.*, {"Job:<id>":
                       "Output"}]`` (what DIRAC's SandboxStoreClient sends)
delegate_proxy         ProxyManager.getProxy(ownerDN, ownerGroup, requestPEM, seconds), the
                       owner's DN from the Registry that Configuration/Server serves
                       (getCompressedData, read once); both URLs from ``[dirac]``
fetch_lfn              FileCatalog.getReplicas + getFileMetadata, then the replica's DIP
                       StorageElement FileTransfer/ToClient (pilot.dirac.data)
store_lfn              StorageElement FileTransfer/FromClient + getMetadata, then
                       FileCatalog.addFile with size and Adler-32 (pilot.dirac.data)
upload_pilot_log       nothing: DIRAC's pilot logging service is HTTPS-only
=====================  ============================================================

Sandbox ``SB:`` entries are always fetched from the configured SandboxStore: DIRAC's
sandbox SE is that very service (its DIP endpoint). Once the job's delegated proxy is
handed over (``use_owner_proxy``, called by the job runner for each new or renewed payload
proxy), that job's sandbox and data calls go out with it, as DIRAC's JobWrapper works
with the payload's proxy: the SandboxStore serves a user's sandbox only to its owner
(or JobAdministrator/JobMonitor), never to a GenericPilot identity. A job without a
payload proxy uses the pilot's own identity for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from pilot import __version__
from pilot.backends.base import FINAL_STATUSES, Inputs, MatchedJob, StatusUpdate
from pilot.backends.dirac import cscfg, data
from pilot.backends.dirac.diset import DisetClient, DisetError, DisetProtocolError, parse_url
from pilot.config import PilotConfig
from pilot.errors import (
    CredentialError,
    NoStoredProxy,
    SandboxError,
    ServerUnreachable,
    UsageError,
    write_error,
)
from pilot.grid import credentials
from pilot.grid.resolve import Credentials
from pilot.job import jdl

log = logging.getLogger(__name__)

EWMSNOMATCH = 1510  # DIRAC's DErrno: "No match found"
EWMSPLTVER = 1511  # "Pilot version does not match"
NO_MATCH_TEXT = "No match found"
WMS = "WorkloadManagement"
DEFAULT_PORTS = {
    "Matcher": 9170,
    "JobStateUpdate": 9136,
    "SandboxStore": 9196,
    "JobMonitoring": 9130,
    "PilotManager": 9171,
}
MINOR_STATUS_MAX = 128  # JobDB's VARCHAR(128): a longer MinorStatus fails the whole update
APP_STATUS_MAX = 255
NO_STORED_PROXY = ("No proxy providers found", "not found in the ProxyDB", "has no proxy")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class DiracSettings:
    """Where the DIRAC services are and who the pilot is (``dips://host:port/System/Name``)."""

    matcher_url: str
    job_state_update_url: str
    sandbox_store_url: str
    proxy: Path
    ca_dir: Path | None = None  # CAs: a hash directory and/or a bundle
    ca_file: Path | None = None
    job_monitoring_url: str | None = None  # only for DiracBackend.job_status (tools, tests)
    pilot_manager_url: str | None = None  # enables register(): PilotManager.setPilotStatus
    proxy_manager_url: str | None = None  # enables payload proxies: ProxyManager.getProxy
    configuration_url: str | None = None  # Configuration/Server: user DNs, storage elements
    file_catalog_url: str | None = None  # else /Systems/DataManagement/URLs/FileCatalog (CS)
    storage_elements: Mapping[str, str] = field(default_factory=dict)  # name -> DIP URL
    output_se: str | None = None  # for OutputData when the JDL names no OutputSE
    setup: str | None = None  # DIRAC setups are gone since v9: "None" goes on the wire
    vo: str | None = None
    source: str = "JobAgent"  # status source: DIRAC takes "Job*" updates as signs of life
    release_version: str | None = None  # sent as ReleaseVersion when the resources lack it
    timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("matcher_url", "job_state_update_url", "sandbox_store_url"):
            _check_url(name, getattr(self, name))
        for name in (
            "job_monitoring_url",
            "pilot_manager_url",
            "proxy_manager_url",
            "configuration_url",
            "file_catalog_url",
        ):
            if getattr(self, name) is not None:
                _check_url(name, getattr(self, name))
        if self.timeout <= 0:
            raise UsageError(f"dirac timeout must be positive, not {self.timeout}")
        for se_name, url in self.storage_elements.items():
            _check_url(f"storage_elements.{se_name}", url)
        if self.proxy_manager_url is not None and self.configuration_url is None:
            # else every job would fail asking for its owner's DN: a pilot eating all jobs
            raise UsageError(
                "[dirac] proxymanager needs [dirac] configuration: the job owner's DN"
                " comes from the Registry that DIRAC's Configuration Server serves"
            )
        if self.ca_dir is None and self.ca_file is None:
            raise CredentialError(
                "DIRAC backend needs CAs: --ca-dir or X509_CERT_DIR, or --ca-file or X509_CERT_FILE"
            )


def _check_url(name: str, url: str) -> None:
    try:
        parse_url(url)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None


def make_ssl_context(settings: DiracSettings) -> ssl.SSLContext:
    """TLS client context: the proxy (RFC 3820 chain) as credential, the settings' CAs."""
    proxy = credentials.load_proxy(settings.proxy)
    return credentials.ssl_context(proxy, settings.ca_dir, settings.ca_file)


class DiracBackend:
    """:class:`pilot.backends.base.Backend` for DIRAC 9 DISET services. Thread-safe."""

    name = "dirac"
    # as DIRAC's JobWrapper: output sandbox files under their base names, its minor statuses
    jobwrapper_rules = True

    def __init__(self, settings: DiracSettings, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        ctx = ssl_context if ssl_context is not None else make_ssl_context(settings)
        self.matcher = self._client(settings.matcher_url, ctx)
        self.job_state = self._client(settings.job_state_update_url, ctx)
        self.sandbox_store = self._client(settings.sandbox_store_url, ctx)
        self.job_monitoring = self._optional(settings.job_monitoring_url, ctx)
        self.pilot_manager = self._optional(settings.pilot_manager_url, ctx)
        self.proxy_manager = self._optional(settings.proxy_manager_url, ctx)
        self.configuration = self._optional(settings.configuration_url, ctx)
        self._pilot_info_reported = False
        self._cs: cscfg.Section | None = None
        self._cs_lock = threading.Lock()
        self._ctx = ctx
        self._data: tuple[str, dict[str, data.StorageElement]] | None = None
        # per job: a context with the owner's delegated proxy (see use_owner_proxy)
        self._owners: dict[str, ssl.SSLContext] = {}
        self._last_ms: dict[str, int] = {}  # per job: the last status time sent (ms)
        self._times_lock = threading.Lock()

    def _client(self, url: str, ctx: ssl.SSLContext) -> DisetClient:
        s = self.settings
        return DisetClient(url, ctx, s.timeout, setup=s.setup, vo=s.vo)

    def _optional(self, url: str | None, ctx: ssl.SSLContext) -> DisetClient | None:
        return None if url is None else self._client(url, ctx)

    # --- pilot --------------------------------------------------------------------------

    def register(self, stamp: str, info: Mapping[str, Any]) -> None:
        """Mark the pilot Running in PilotAgentsDB when DIRAC knows its reference."""
        if self.pilot_manager is None:
            log.debug("no PilotManager URL: pilot %s is not reported to DIRAC", stamp)
            return
        resources = info.get("resources") or {}
        reference = str(resources.get("PilotReference") or stamp)
        site = info.get("site") or resources.get("Site")
        ce = info.get("ce") or resources.get("GridCE")
        reason = f"pilot-agent {__version__} started"
        args = (reference, "Running", ce, reason, site, resources.get("CEQueue"))
        try:
            updated = self.pilot_manager.call("setPilotStatus", *args)
        except DisetError as exc:
            log.warning("could not report pilot %s to DIRAC: %s", reference, exc)
            return
        if updated:
            log.info("pilot %s reported Running to DIRAC (site %s, CE %s)", reference, site, ce)
        else:
            log.info("pilot reference %s is not in DIRAC's PilotAgentsDB: not recorded", reference)

    def config(self) -> cscfg.Section:
        """DIRAC's configuration from its Configuration Server, fetched once."""
        with self._cs_lock:
            if self._cs is None:
                if self.configuration is None:
                    raise UsageError("no DIRAC Configuration Server: set [dirac] configuration")
                data = self.configuration.call("getCompressedData")
                try:
                    self._cs = cscfg.from_compressed(data)
                except cscfg.CfgError as exc:
                    raise DisetProtocolError(f"Configuration/Server: {exc}") from None
                log.debug("read DIRAC's configuration from %s", self.configuration.url)
            return self._cs

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        """The job owner's proxy from the ProxyManager, delegated to our request.

        DIRAC 9.1.22 ignores "limited": the proxy is limited only if the stored one is.
        """
        if self.proxy_manager is None:
            raise NoStoredProxy("no ProxyManager configured ([dirac] proxymanager)")
        owner, group = job.extra.get("Owner"), job.extra.get("Group")
        if not owner or not group:
            raise NoStoredProxy(f"the Matcher named no owner/group for job {job.job_id}")
        dn = cscfg.user_dn(self.config(), str(owner))
        if dn is None:
            raise CredentialError(f"DIRAC user {owner} has no DN in the Registry")
        try:
            chain = self.proxy_manager.call("getProxy", dn, str(group), request_pem, int(lifetime))
        except DisetError as exc:
            if any(text in str(exc) for text in NO_STORED_PROXY):
                raise NoStoredProxy(f"no proxy of {owner}@{group} in the ProxyManager") from exc
            raise
        if not isinstance(chain, str):
            raise DisetProtocolError(f"ProxyManager.getProxy: not a PEM chain: {chain!r:.80}")
        return chain

    # --- data ---------------------------------------------------------------------------

    def use_owner_proxy(self, job: MatchedJob, proxy: credentials.Proxy | None) -> None:
        """Act as the job's owner, with ``proxy`` (the payload's delegated proxy, renewed
        ones too), for that job's sandboxes and data, as DIRAC's JobWrapper does: DIRAC
        lets a pilot identity (GenericPilot) match jobs and report on them but not read
        users' sandboxes, and the catalogue should record the owner. ``None``: the job is
        over. A job without a payload proxy uses the pilot's own."""
        ca_dir, ca_file = self.settings.ca_dir, self.settings.ca_file
        ctx = None if proxy is None else credentials.ssl_context(proxy, ca_dir, ca_file)
        with self._cs_lock:
            if ctx is None:
                self._owners.pop(job.job_id, None)
            else:
                self._owners[job.job_id] = ctx

    def _ctx_for(self, job: MatchedJob) -> ssl.SSLContext:
        with self._cs_lock:
            return self._owners.get(job.job_id, self._ctx)

    def data_manager(self, job: MatchedJob | None = None) -> data.DataManager:
        """File Catalog and storage elements (from the settings, else from DIRAC's CS),
        spoken to as ``job``'s owner when the pilot holds its proxy."""
        ctx = self._ctx if job is None else self._ctx_for(job)
        with self._cs_lock:
            ready = self._data
        if ready is None:
            ready = self._data_endpoints()
            with self._cs_lock:
                self._data = ready
        catalog_url, elements = ready
        return data.DataManager(
            self._client(catalog_url, ctx), elements, lambda url: self._client(url, ctx)
        )

    def _data_endpoints(self) -> tuple[str, dict[str, data.StorageElement]]:
        s = self.settings
        catalog_url = s.file_catalog_url
        elements = {n: data.StorageElement(n, u) for n, u in s.storage_elements.items()}
        if catalog_url is None or not elements:
            if self.configuration is None:
                raise data.DataError(
                    "DIRAC data management needs [dirac] filecatalog and storage_elements,"
                    " or a Configuration Server ([dirac] configuration)"
                )
            cs = self.config()
            catalog_url = catalog_url or cs.get("/Systems/DataManagement/URLs/FileCatalog")
            if not elements:
                elements = data.storage_elements_from_cs(cs)
        if not catalog_url:
            raise data.DataError("no FileCatalog URL in the settings or DIRAC's configuration")
        return catalog_url, elements

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        self.data_manager(job).download(lfn, dest)

    def store_lfn(
        self, job: MatchedJob, lfn: str, source: Path, output_se: str | None = None
    ) -> None:
        se_names = [n.strip() for n in (output_se or "").split(",") if n.strip()]
        if not se_names and self.settings.output_se:
            se_names = [self.settings.output_se]
        if not se_names:
            raise data.DataError("no OutputSE in the JDL and no [dirac] output_se")
        errors = []
        for se_name in se_names:  # the first that works, as DIRAC's JobWrapper does
            try:
                self.data_manager(job).upload(source, lfn, se_name)
                return
            except data.DataError as exc:
                errors.append(str(exc))
        raise data.DataError("; ".join(errors))

    def output_lfn(self, job: MatchedJob, desc: jdl.JobDescription, name: str) -> str:
        """DIRAC's convention for OutputData files named without an LFN."""
        owner = str(job.extra.get("Owner") or "")
        if not owner:
            raise data.DataError(f"the Matcher named no owner for job {job.job_id}")
        vo = self.settings.vo
        group = job.extra.get("Group")
        if self.configuration is not None and group:
            vo = self.config().get(f"/Registry/Groups/{group}/VO") or vo
        if not vo:
            raise data.DataError("the job owner's VO is unknown: set vo")
        return "LFN:" + data.user_lfn(vo, owner, job.job_id, desc.output_path, name)

    def upload_pilot_log(self, stamp: str, text: str) -> None:
        log.debug(
            "pilot %s: no DISET service takes pilot logs; %d chars kept local", stamp, len(text)
        )

    def close(self) -> None:
        """Nothing held open: every DISET call has its own connection."""

    # --- matching -----------------------------------------------------------------------

    def match(self, resources: Mapping[str, Any]) -> MatchedJob | None:
        description = self.resource_description(resources)
        try:
            reply = self.matcher.call("requestJob", description)
        except DisetError as exc:
            if exc.errno == EWMSNOMATCH or (exc.errno == 0 and NO_MATCH_TEXT in str(exc)):
                log.debug("no job matched at %s", description.get("Site"))
                return None
            raise
        if not isinstance(reply, dict) or "JobID" not in reply or "JDL" not in reply:
            raise DisetProtocolError(f"Matcher.requestJob: no JobID/JDL in {reply!r:.200}")
        self._pilot_info_reported = bool(reply.get("PilotInfoReportedFlag"))
        extra = {k: v for k, v in reply.items() if k not in ("JobID", "JDL")}
        job = MatchedJob(str(reply["JobID"]), str(reply["JDL"]), extra=MappingProxyType(extra))
        log.info(
            "matched DIRAC job %s (owner %s, group %s)",
            job.job_id,
            extra.get("Owner"),
            extra.get("Group"),
        )
        return job

    def resource_description(self, resources: Mapping[str, Any]) -> dict[str, Any]:
        """``resources`` (DIRAC names) as sent to the Matcher, with the pilot's defaults."""
        description = {str(k): _wire(v) for k, v in resources.items() if v is not None}
        if self.settings.vo:
            description.setdefault("VirtualOrganization", self.settings.vo)
        if self.settings.release_version:
            description.setdefault("ReleaseVersion", self.settings.release_version)
        if self._pilot_info_reported:
            description["PilotInfoReportedFlag"] = True
        return description

    # --- job state ----------------------------------------------------------------------

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        fields: dict[str, str] = {}
        if update.status is not None:
            fields["Status"] = str(update.status)
        if update.minor:
            fields["MinorStatus"] = _fit(update.minor, MINOR_STATUS_MAX)
        if update.application:
            fields["ApplicationStatus"] = _fit(update.application, APP_STATUS_MAX)
        job_id = _job_id(job)
        if list(fields) == ["ApplicationStatus"]:
            self.job_state.call(
                "setJobApplicationStatus",
                job_id,
                fields["ApplicationStatus"],
                self.settings.source,
            )
        elif fields:
            fields["Source"] = self.settings.source
            when = dirac_time(self._status_ms(job.job_id, update.timestamp) / 1000)
            self.job_state.call("setJobStatusBulk", job_id, {when: fields})
            if update.status in FINAL_STATUSES:  # landed: no later status of the job to space
                with self._times_lock:
                    self._last_ms.pop(job.job_id, None)
        if update.extra:
            self._set_parameters(job_id, update.extra)

    def timed_jobs(self) -> list[str]:
        """The jobs whose last status time is kept (see ``_status_ms``): those whose final
        status has not landed yet."""
        with self._times_lock:
            return list(self._last_ms)

    def _status_ms(self, job_id: str, timestamp: float) -> int:
        """The update's time in whole milliseconds, each later than the job's last one.

        DIRAC keeps a status's time to the millisecond, rounded (``StatusTimeOrder``), and
        ignores an update older than the newest it has: two updates within one
        millisecond (an intermediate status, then at once the final one) could drop the
        final one, leaving a Done job Completing on the server. A job's entry goes once
        its final status has landed; a final status whose call failed (its reply lost,
        say) keeps it, so that its retry is still spaced after the status before it."""
        with self._times_lock:
            ms = max(int(timestamp * 1000), self._last_ms.get(job_id, 0) + 1)
            self._last_ms[job_id] = ms
        return ms

    def _set_parameters(self, job_id: int | str, extra: Mapping[str, Any]) -> None:
        """Job parameters (DIRAC keeps them in OpenSearch): best effort, never fatal."""
        pairs = [[name, value] for name, value in _flatten(extra)]
        try:
            self.job_state.call("setJobParameters", job_id, pairs)
        except DisetError as exc:
            log.warning("job %s: parameters %s not stored: %s", job_id, [p[0] for p in pairs], exc)

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        return []  # DIRAC sends its commands with heartbeats

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        """sendHeartBeat; DIRAC answers pending commands (``{"Kill": ""}``) once each.

        Note: DIRAC sets the job Running again on every heartbeat (even a Killed one).
        """
        dynamic = {str(k): _scalar(v) for k, v in metrics.items() if v is not None}
        reply = self.job_state.call("sendHeartBeat", _job_id(job), dynamic, {})
        commands = tuple(str(c) for c in reply) if isinstance(reply, dict) else ()
        if commands:
            log.info("job %s: DIRAC commands %s", job.job_id, ", ".join(commands))
        return commands

    def job_status(self, job_id: str) -> dict[str, Any]:
        """JobMonitoring.getJobsStatus: ``{"Status": ..., "MinorStatus": ...}`` (tools)."""
        if self.job_monitoring is None:
            raise UsageError("job_status needs a JobMonitoring URL in the DIRAC settings")
        reply = self.job_monitoring.call("getJobsStatus", [int(job_id)])
        status: dict[str, Any] = reply.get(job_id) or reply.get(int(job_id)) or {}
        return status

    # --- sandboxes ----------------------------------------------------------------------

    def fetch_input_sandbox(self, job: MatchedJob, inputs: Inputs, dest_dir: Path) -> list[Path]:
        """Download each ``SB:`` entry into ``dest_dir``; plain names are inside those."""
        paths = []
        store = self._sandbox_store(job)
        for entry in inputs.sandboxes:  # LFNs come through fetch_lfn, plain names inside these
            se_name, path = split_sandbox_url(entry)
            dest = dest_dir / _archive_name(path)
            log.debug(
                "job %s: fetching %s from %s (SE %s)",
                job.job_id,
                path,
                store.url,
                se_name,
            )
            self._download(store, path, dest, entry)
            paths.append(dest)
        return paths

    def _sandbox_store(self, job: MatchedJob) -> DisetClient:
        """The SandboxStore as the job's owner (DIRAC serves a user's sandboxes only to
        that user), or as the pilot when it holds no proxy of the owner."""
        ctx = self._ctx_for(job)
        if ctx is self._ctx:
            return self.sandbox_store
        return self._client(self.settings.sandbox_store_url, ctx)

    def _download(self, store: DisetClient, path: str, dest: Path, entry: str) -> None:
        part = dest.with_name(dest.name + ".part")
        try:
            size = store.receive_file(store.url + path, part)
            part.replace(dest)
        except ServerUnreachable:
            raise
        except DisetError as exc:
            raise SandboxError(f"input sandbox {entry}: {exc}") from exc
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise write_error(exc, dest) from exc
        log.info("input sandbox %s: %d bytes", dest.name, size)

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        """Upload ``archive`` (``*.tar``, ``*.tar.gz``, ...) as the job's Output sandbox."""
        extension = _tar_extension(archive)
        file_id = [f"{_md5(archive)}.{extension}", {f"Job:{job.job_id}": "Output"}]
        try:
            location = self._sandbox_store(job).send_file(file_id, archive)
        except ServerUnreachable:
            raise
        except DisetError as exc:
            raise SandboxError(f"output sandbox of job {job.job_id}: {exc}") from exc
        except OSError as exc:
            raise SandboxError(f"cannot read {archive}: {exc}") from exc
        log.info("job %s: output sandbox stored as %s", job.job_id, location)


# --- helpers ------------------------------------------------------------------------------


def dirac_time(timestamp: float) -> str:
    """A status time stamp as DIRAC writes them: naive UTC ``YYYY-mm-dd HH:MM:SS.ffffff``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _fit(text: str, limit: int) -> str:
    """``text`` cut to what a JobDB column holds (the full text is in the pilot's log)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_sandbox_url(entry: str) -> tuple[str, str]:
    """``SB:<SE name>|<path>`` -> (SE name, path)."""
    se_name, bar, path = entry[3:].partition("|")
    if not entry.startswith("SB:") or not bar or not se_name or not path.startswith("/"):
        raise SandboxError(f"malformed sandbox location {entry!r} (want SB:<SE>|/<path>)")
    return se_name, path


def _archive_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if not _SAFE_NAME.fullmatch(name):
        raise SandboxError(f"refusing sandbox file name {name!r}")
    return name


def _tar_extension(archive: Path) -> str:
    position = archive.name.find(".tar")
    extension = archive.name[position + 1 :] if position >= 0 else ""
    if not extension or not extension.replace(".", "").isalnum():
        raise SandboxError(f"output sandbox {archive.name} is not a .tar[.gz|.bz2|.xz] archive")
    return extension


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def _job_id(job: MatchedJob) -> int | str:
    return int(job.job_id) if job.job_id.isdigit() else job.job_id


def _wire(value: Any) -> Any:
    """A resource value in a JSON/DISET-friendly shape."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(_wire(v) for v in value)
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _wire(v) for k, v in value.items()}
    return value


def _scalar(value: Any) -> Any:
    """Heartbeat values land in an SQL column: numbers and strings only."""
    value = _wire(value)
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


def _flatten(extra: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in extra.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs.extend(_flatten(value, f"{name}."))
        else:
            pairs.append((name, str(_wire(value))))
    return pairs


# --- configuration --------------------------------------------------------------------------


def settings_from_config(cfg: PilotConfig, creds: Credentials) -> DiracSettings:
    """``--server dips://host[:port/WorkloadManagement/Matcher]`` plus the ``[dirac]`` table.

    Table keys (any case, ``_`` ignored): ``matcher``, ``jobstateupdate``, ``sandboxstore``,
    ``jobmonitoring``, ``pilotmanager``, ``proxymanager``, ``configuration``,
    ``filecatalog`` (URLs), ``storage_elements`` (a table: SE name = DIP URL),
    ``output_se``, ``setup``, ``release_version``, ``source``, ``timeout``. Matcher,
    JobStateUpdate and SandboxStore without a URL are taken on the server's host at DIRAC's
    default ports; the optional JobMonitoring, PilotManager, ProxyManager and Configuration
    Server only when given. Proxy and CAs: the pilot's resolved ``creds``.
    """
    table = {str(k).lower().replace("_", ""): v for k, v in cfg.dirac.items()}
    server = urlsplit(cfg.server or "")
    if server.scheme != "dips" or not server.hostname:
        raise UsageError(f"DIRAC backend needs a dips:// server URL, not {cfg.server!r}")
    has_path = server.path.strip("/") != ""

    def url(service: str) -> str:
        if table.get(service.lower()):
            return str(table[service.lower()])
        if service == "Matcher" and has_path:
            return str(cfg.server)
        return f"dips://{server.hostname}:{DEFAULT_PORTS[service]}/{WMS}/{service}"

    if creds.proxy_path is None:
        raise CredentialError("DIRAC backend needs an X.509 proxy: --proxy or X509_USER_PROXY")
    return DiracSettings(
        matcher_url=url("Matcher"),
        job_state_update_url=url("JobStateUpdate"),
        sandbox_store_url=url("SandboxStore"),
        job_monitoring_url=_opt_str(table.get("jobmonitoring")),
        pilot_manager_url=_opt_str(table.get("pilotmanager")),
        proxy_manager_url=_opt_str(table.get("proxymanager")),
        configuration_url=_opt_str(table.get("configuration")),
        file_catalog_url=_opt_str(table.get("filecatalog")),
        storage_elements=_storage_elements(table.get("storageelements")),
        output_se=_opt_str(table.get("outputse")),
        proxy=creds.proxy_path,
        ca_dir=creds.ca_dir,
        ca_file=creds.ca_file,
        setup=_opt_str(table.get("setup")),
        vo=cfg.vo,
        source=str(table.get("source") or "JobAgent"),
        release_version=_opt_str(table.get("releaseversion")),
        timeout=float(table.get("timeout") or 60.0),
    )


def _storage_elements(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise UsageError("[dirac.storage_elements] must be a table of name = DIP URL")
    return {str(k): str(v) for k, v in value.items()}


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
