"""A real DIRAC 9.1.22 WMS on loopback for the pilot's tests: DISET services, MariaDB, test PKI.

Set-up (cached, idempotent)::

    $PILOT_DIRAC_VENV               requirements/dirac.lock (DIRAC[server]==9.1.22) in its own
                                    venv (never the pilot's .venv); Debian's gfal2 binding is
                                    linked in because
                                    gfal2-python does not build against Debian 12's gfal2
    $PILOT_DIRAC_STATE (default: a new temp dir)
        etc/dirac.cfg               written at each start (free loopback ports)
        etc/grid-security/          test CA, host, user and pilot certs (certs.py)
        mysql/                      private MariaDB datadir + socket (never the system service)
        run/*.pid, log/*.log        one pid file and one log per process
        run/x509up_testuser         job owner's proxy (dirac-proxy-init, group testvo_user,
                                    NormalUser), uploaded to the ProxyManager
        run/x509up_otheruser        another owner's proxy, never uploaded (-N)
        run/x509up_testpilot        the pilots' proxy (group testvo_pilot: GenericPilot,
                                    LimitedDelegation), not uploaded
        run/x509up_testpilot_nodeleg  the same identity in testvo_pilot_nodeleg (GenericPilot
                                    only: the ProxyManager refuses it)
        storage/sandboxes           the SandboxStore's files
        storage/se                  the DIP storage element SE-LOCAL (DataManagement/StorageElement)
        etc/PilotAgentTest.cfg      what Configuration/Server serves (the same text as dirac.cfg)

Processes: mariadbd, one ``dirac-service`` per service (through ``loopback.py`` so that each
listens on 127.0.0.1 only) and the Optimizers executor. They are started with their own
session and stopped by pid (process group), never by name.

Also a command line: ``python -m testbed.dirac_server up|down|env``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from pilot import proc

from .certs import make_pki

log = logging.getLogger(__name__)

DIRAC_VERSION = "9.1.22"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCK = REPO / "requirements" / "dirac.lock"  # what the DIRAC venv is made from
STATE_ENV = "PILOT_DIRAC_STATE"
VENV_ENV = "PILOT_DIRAC_VENV"
DEFAULT_VENV = REPO / "build" / "cache" / "dirac-venv"
BASE_PYTHON = Path("/usr/bin/python3.11")
GFAL2_SO = Path("/usr/lib/python3/dist-packages/gfal2.cpython-311-x86_64-linux-gnu.so")
SMALL_INNODB = ("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M")
DATABASES = (
    "JobDB",
    "JobLoggingDB",
    "PilotAgentsDB",
    "TaskQueueDB",
    "SandboxMetadataDB",
    "ResourceStatusDB",
    "ResourceManagementDB",
    "ProxyDB",
    "FileCatalogDB",
)
DB_CLASSES = (
    "WorkloadManagementSystem.DB.JobDB.JobDB",
    "WorkloadManagementSystem.DB.JobLoggingDB.JobLoggingDB",
    "WorkloadManagementSystem.DB.PilotAgentsDB.PilotAgentsDB",
    "WorkloadManagementSystem.DB.TaskQueueDB.TaskQueueDB",
    "WorkloadManagementSystem.DB.SandboxMetadataDB.SandboxMetadataDB",
    "ResourceStatusSystem.DB.ResourceStatusDB.ResourceStatusDB",
    "ResourceStatusSystem.DB.ResourceManagementDB.ResourceManagementDB",
    "FrameworkSystem.DB.ProxyDB.ProxyDB",
)


class SetupError(Exception):
    """The DIRAC server cannot be set up on this machine; the message says why."""


@dataclass(frozen=True)
class Service:
    key: str  # lower-case name: pid/log file name and template placeholder prefix
    path: str  # System/Component


SERVICES = (
    Service("resourcestatus", "ResourceStatus/ResourceStatus"),
    Service("resourcemanagement", "ResourceStatus/ResourceManagement"),
    Service("jobmanager", "WorkloadManagement/JobManager"),
    Service("jobmonitoring", "WorkloadManagement/JobMonitoring"),
    Service("jobstateupdate", "WorkloadManagement/JobStateUpdate"),
    Service("sandboxstore", "WorkloadManagement/SandboxStore"),
    Service("matcher", "WorkloadManagement/Matcher"),
    Service("optimizationmind", "WorkloadManagement/OptimizationMind"),
    Service("pilotmanager", "WorkloadManagement/PilotManager"),
    Service("proxymanager", "Framework/ProxyManager"),
    Service("configuration", "Configuration/Server"),
    Service("filecatalog", "DataManagement/FileCatalog"),
    Service("storageelement", "DataManagement/StorageElement"),
)
# started with extra options (the Configuration Server is the master of its own copy)
SERVICE_OPTIONS = {"configuration": ("-o", "/DIRAC/Configuration/Master=yes")}


@dataclass(frozen=True)
class Layout:
    root: Path
    venv: Path

    @property
    def pki(self) -> Path:
        return self.root / "etc" / "grid-security"

    @property
    def ca_dir(self) -> Path:
        return self.pki / "certificates"

    @property
    def cfg(self) -> Path:
        return self.root / "etc" / "dirac.cfg"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def proxy(self) -> Path:
        return self.run / "x509up_testuser"

    @property
    def other_proxy(self) -> Path:
        return self.run / "x509up_otheruser"

    @property
    def pilot_proxy(self) -> Path:
        return self.run / "x509up_testpilot"

    @property
    def nodeleg_proxy(self) -> Path:
        return self.run / "x509up_testpilot_nodeleg"

    @property
    def mysql_data(self) -> Path:
        return self.root / "mysql" / "data"

    @property
    def mysql_socket(self) -> Path:
        return self.root / "mysql" / "mysqld.sock"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def default_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).resolve()


def default_layout() -> Layout:
    """State in $PILOT_DIRAC_STATE, else in a new temporary directory."""
    state = os.environ.get(STATE_ENV) or tempfile.mkdtemp(prefix="pilot-dirac-")
    return Layout(Path(state).resolve(), default_venv())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


# --- set-up -------------------------------------------------------------------------


def check_tools() -> None:
    """Fail with the missing Debian package named when a needed tool is absent."""
    needs = {
        "mariadbd": "mariadb-server",
        "mariadb-install-db": "mariadb-server",
        "mariadb": "mariadb-client",
    }
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"
    for tool, package in needs.items():
        if shutil.which(tool, path=path) is None:
            raise SetupError(f"needs {tool} (Debian package {package})")
    if not BASE_PYTHON.exists():
        raise SetupError(f"needs {BASE_PYTHON} (Debian python3.11 + python3.11-venv)")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_digest() -> str:
    """Short digest of the lock file: a venv made from other pins is made again."""
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]


def ensure_venv(venv: Path) -> None:
    """Create the DIRAC server venv once (pip install from PyPI, ~2 min); cached after that."""
    marker = venv / f".dirac-{DIRAC_VERSION}-{_lock_digest()}-ok"
    if marker.exists():
        return
    with _locked(venv.parent / f"{venv.name}.lock"):
        if marker.exists():
            return
        _build_venv(venv)
        marker.write_text(LOCK.read_text())


def _build_venv(venv: Path) -> None:
    for tool, package in (("swig", "swig"), ("gcc", "gcc"), ("mariadb_config", "libmariadb-dev")):
        if shutil.which(tool) is None:
            raise SetupError(f"needs {tool} to build DIRAC's M2Crypto/mysqlclient (apt {package})")
    if not GFAL2_SO.exists():
        raise SetupError(f"needs {GFAL2_SO} (Debian python3-gfal2): DIRAC depends on gfal2-python")
    shutil.rmtree(venv, ignore_errors=True)
    _checked([str(BASE_PYTHON), "-m", "venv", str(venv)], "python -m venv", timeout=120)
    _link_gfal2(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PYTHONPATH")}
    env["PIP_CONFIG_FILE"] = os.devnull
    # Exactly the locked versions (make lock refreshes them); no dependency resolution here.
    pip = [
        str(venv / "bin" / "pip"),
        "install",
        "-q",
        "--require-hashes",
        "--no-deps",
        "-r",
        str(LOCK),
    ]
    log.info(
        "installing DIRAC[server]==%s into %s from %s (a few minutes)",
        DIRAC_VERSION,
        venv,
        LOCK.relative_to(REPO),
    )
    _checked(pip, f"pip install -r {LOCK.name}", timeout=1800, env=env)


def _link_gfal2(venv: Path) -> None:
    """gfal2-python has no wheel and its sdist fails against Debian 12's gfal2: use Debian's."""
    result = proc.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ]
    )
    site = Path(result.stdout.strip())
    (site / GFAL2_SO.name).symlink_to(GFAL2_SO)
    dist = site / "gfal2_python-1.12.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gfal2-python\nVersion: 1.12.0\n")
    (dist / "INSTALLER").write_text("debian\n")
    (dist / "RECORD").write_text("")


def _checked(
    argv: list[str],
    what: str,
    *,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
) -> proc.CommandResult:
    result = proc.run(argv, timeout=timeout, env=env, stdin_text=stdin_text)
    if not result.ok:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise SetupError(f"{what} failed (exit {result.returncode}): {detail}")
    return result


def init_datadir(layout: Layout) -> None:
    if (layout.mysql_data / "mysql").is_dir():
        return
    layout.mysql_data.mkdir(parents=True, exist_ok=True)
    argv = [
        "mariadb-install-db",
        "--no-defaults",
        f"--datadir={layout.mysql_data}",
        "--user=root",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        *SMALL_INNODB,
    ]
    _checked(argv, "mariadb-install-db", timeout=180)


# --- processes ----------------------------------------------------------------------


@dataclass
class Harness:
    """Set up, start and stop the test DIRAC server in ``layout``."""

    layout: Layout = field(default_factory=default_layout)
    ports: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def setup(self) -> None:
        check_tools()
        ensure_venv(self.layout.venv)
        for sub in ("etc", "run", "log", "storage/sandboxes", "storage/se", "mysql"):
            (self.layout.root / sub).mkdir(parents=True, exist_ok=True)
        make_pki(self.layout.pki)
        init_datadir(self.layout)

    def start(self) -> None:
        t0 = time.monotonic()
        self._load_or_pick_ports()
        self._write_cfg()
        self._start_mysql()
        self._init_databases()
        self._start_services()
        self._sync_site_status()
        self._start_executor()
        self._make_proxy()
        log.info("DIRAC server up in %.1f s (state %s)", time.monotonic() - t0, self.layout.root)

    # environment -------------------------------------------------------------------

    def env(self, *, with_proxy: bool = True) -> dict[str, str]:
        """Environment for DIRAC commands (``dirac-*``) against this server."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "X509_USER_PROXY", "DIRACSYSCONFIG")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            DIRAC_ROOT_PATH=str(self.layout.root),
            X509_CERT_DIR=str(self.layout.ca_dir),
            X509_USER_CERT=str(self.layout.pki / "user" / "usercert.pem"),
            X509_USER_KEY=str(self.layout.pki / "user" / "userkey.pem"),
            PATH=f"{self.layout.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        if with_proxy:
            env["X509_USER_PROXY"] = str(self.layout.proxy)
        return env

    def url(self, key: str) -> str:
        service = next(s for s in SERVICES if s.key == key)
        return f"dips://localhost:{self.ports[key]}/{service.path}"

    # ports and cfg -----------------------------------------------------------------

    def _load_or_pick_ports(self) -> None:
        saved = self.layout.run / "ports"
        if saved.exists() and self._mysql_alive():
            pairs = (line.split("=") for line in saved.read_text().split())
            self.ports = {k: int(v) for k, v in pairs}
            return
        self.ports = {"mysql": free_port()} | {s.key: free_port() for s in SERVICES}
        saved.write_text("".join(f"{k}={v}\n" for k, v in self.ports.items()))

    def _write_cfg(self) -> None:
        values = {f"{s.key.upper()}_PORT": str(self.ports[s.key]) for s in SERVICES}
        values |= {"ROOT": str(self.layout.root), "DBPORT": str(self.ports["mysql"])}
        template = Template((HERE / "dirac.cfg.template").read_text())
        text = template.substitute(values)
        self.layout.cfg.write_text(text)
        (self.layout.cfg.parent / "PilotAgentTest.cfg").write_text(text)  # what the CS serves

    # MariaDB -----------------------------------------------------------------------

    def _mysql_alive(self) -> bool:
        return self._alive("mysql")

    def _start_mysql(self) -> None:
        if self._mysql_alive():
            return
        argv = [
            shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "mariadbd",
            "--no-defaults",
            "--user=root",
            f"--datadir={self.layout.mysql_data}",
            f"--socket={self.layout.mysql_socket}",
            f"--pid-file={self.layout.root / 'mysql' / 'mysqld.pid'}",
            "--bind-address=127.0.0.1",
            f"--port={self.ports['mysql']}",
            f"--log-error={self.layout.logs / 'mysql.log'}",
            "--skip-log-bin",
            *SMALL_INNODB,
        ]
        self._spawn("mysql", argv, marker=str(self.layout.mysql_data))
        self._wait_port("mysql", self.ports["mysql"], timeout=120)

    def _sql(self, sql: str, database: str | None = None) -> None:
        argv = ["mariadb", "--no-defaults", f"--socket={self.layout.mysql_socket}", "-uroot"]
        if database:
            argv.append(database)
        _checked(argv, "mariadb (creating DIRAC's databases)", timeout=120, stdin_text=sql)

    def _init_databases(self) -> None:
        marker = self.layout.root / "mysql" / "dirac-dbs-ok"
        if marker.exists():
            return
        users = ("'Dirac'@'localhost'", "'Dirac'@'127.0.0.1'")
        sql = [f"CREATE USER IF NOT EXISTS {u} IDENTIFIED BY 'diracpass';" for u in users]
        for db in DATABASES:
            sql.append(f"CREATE DATABASE IF NOT EXISTS {db};")
            sql.append(f"GRANT ALL PRIVILEGES ON {db}.* TO {', '.join(users)};")
        self._sql("\n".join(sql) + "\nFLUSH PRIVILEGES;\n")
        site = self._dirac_site_dir()
        for db in DATABASES:
            schema = next(site.rglob(f"{db}.sql"), None)
            if schema is not None:
                self._sql(schema.read_text(), db)
        # DIRAC's DB classes add tables beyond the .sql files; create them once, serially:
        # services started in parallel on fresh DBs race on CREATE TABLE (MySQL error 1131)
        code = "import DIRAC\nDIRAC.initialize(require_auth=False)\n"
        code += "from DIRAC.Core.Utilities.ObjectLoader import ObjectLoader\n"
        for dotted in DB_CLASSES:
            module, cls = dotted.rsplit(".", 1)
            code += f"r = ObjectLoader().loadObject({module!r}, {cls!r})\n"
            code += "assert r['OK'], r\nr['Value']()\n"
        _checked(
            [str(self.layout.python), "-c", code], "DIRAC DB init", env=self.env(with_proxy=False)
        )
        marker.write_text("ok\n")

    def _dirac_site_dir(self) -> Path:
        code = "import DIRAC, os; print(os.path.dirname(DIRAC.__file__))"
        result = _checked([str(self.layout.python), "-c", code], "locating DIRAC", env=self.env())
        return Path(result.stdout.strip())

    # DIRAC components --------------------------------------------------------------

    def _start_services(self) -> None:
        launcher = str(HERE / "loopback.py")
        env = self.env(with_proxy=False)
        started = []
        for svc in SERVICES:
            if self._alive(svc.key):
                continue
            argv = [str(self.layout.python), launcher, "dirac-service", svc.path]
            argv += SERVICE_OPTIONS.get(svc.key, ())
            self._spawn(svc.key, argv, marker=svc.path, env=env)
            started.append(svc)
        for svc in started:
            self._wait_port(svc.key, self.ports[svc.key], timeout=240)

    def _sync_site_status(self) -> None:
        """RSS: the Matcher serves only Active sites, and DIRAC's sandbox clients
        (dirac-wms-job-get-output) only use Active storage elements."""
        marker = self.layout.run / "rss-sync-ok"
        if marker.exists():
            return
        for element in ("Site", "Resource"):
            argv = [
                str(self.layout.venv / "bin" / "dirac-rss-sync"),
                f"--element={element}",
                "--defaultStatus=Active",
                "-o",
                "/DIRAC/Security/UseServerCertificate=yes",
            ]
            _checked(
                argv,
                f"dirac-rss-sync --element={element}",
                timeout=180,
                env=self.env(with_proxy=False),
            )
        marker.write_text("ok\n")

    def _start_executor(self) -> None:
        if self._alive("optimizers"):
            return
        argv = [
            str(self.layout.venv / "bin" / "dirac-executor"),
            "WorkloadManagement/Optimizers",
            "-o",
            "/DIRAC/Security/UseServerCertificate=yes",
        ]
        self._spawn("optimizers", argv, marker="Optimizers", env=self.env(with_proxy=False))

    def _make_proxy(self) -> None:
        """The proxies, by DIRAC's own ``dirac-proxy-init``: the job owner's (group
        testvo_user, NormalUser only), uploaded to the ProxyManager (DIRAC 9 does that by
        default) so that pilots get their payloads' proxies delegated from it; another
        owner's, not uploaded; and the pilots' own (group testvo_pilot: GenericPilot +
        LimitedDelegation; testvo_pilot_nodeleg: GenericPilot only), not uploaded."""
        pki = self.layout.pki
        made = (
            (self.layout.proxy, "user", "testvo_user", ()),
            (self.layout.other_proxy, "other", "testvo_user", ("-N",)),
            (self.layout.pilot_proxy, "pilot", "testvo_pilot", ("-N",)),
            (self.layout.nodeleg_proxy, "pilot", "testvo_pilot_nodeleg", ("-N",)),
        )
        for path, identity, group, options in made:
            path.unlink(missing_ok=True)
            argv = [str(self.layout.venv / "bin" / "dirac-proxy-init"), "-g", group, *options]
            env = self.env(with_proxy=False) | {
                "X509_USER_CERT": str(pki / identity / "usercert.pem"),
                "X509_USER_KEY": str(pki / identity / "userkey.pem"),
                "X509_USER_PROXY": str(path),
            }
            result = proc.run(argv, timeout=120, env=env)
            if not result.ok or not path.is_file():
                output = (result.stdout + result.stderr).strip()[-2000:]
                raise SetupError(
                    f"dirac-proxy-init -g {group} wrote no proxy (exit {result.returncode}):"
                    f" {output}"
                )

    # pid bookkeeping ---------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], *, marker: str, env: Mapping[str, str] | None = None
    ) -> None:
        with (self.layout.logs / f"{name}.log").open("ab") as out:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=self.layout.root,
                start_new_session=True,
            )
        self._procs[name] = child
        (self.layout.run / f"{name}.pid").write_text(f"{child.pid}\n{marker}\n")

    def _pid(self, name: str) -> int | None:
        """Pid of a live component: our child, or from ``run/<name>.pid`` (another process
        started it) if its command line still shows the marker (no pid reuse)."""
        child = self._procs.get(name)
        if child is not None:  # just after exec its /proc cmdline can still be empty
            return child.pid if child.poll() is None else None
        try:
            pid_text, marker = (self.layout.run / f"{name}.pid").read_text().split("\n")[:2]
            cmdline = Path(f"/proc/{int(pid_text)}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            return None
        return int(pid_text) if marker.encode() in cmdline else None

    def _alive(self, name: str) -> bool:
        return self._pid(name) is not None

    def _wait_port(self, name: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(port):
                return
            if not self._alive(name):
                break
            time.sleep(0.25)
        log_file = self.layout.logs / f"{name}.log"
        raise SetupError(
            f"{name} not listening on 127.0.0.1:{port}; {log_file}:\n{_tail(log_file)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every component by pid (process group), DIRAC first, MariaDB last."""
        names = ["optimizers", *(s.key for s in reversed(SERVICES))]
        self._terminate(names, timeout)
        self._terminate(["mysql"], timeout)

    def _terminate(self, names: list[str], timeout: float) -> None:
        pids = {name: pid for name in names if (pid := self._pid(name)) is not None}
        for pid in pids.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self._running(n, p) for n, p in pids.items()):
            time.sleep(0.2)
        for name, pid in pids.items():
            if self._running(name, pid):
                log.warning("%s (pid %d) ignored SIGTERM, sending SIGKILL", name, pid)
                _signal_group(pid, signal.SIGKILL)
            child = self._procs.pop(name, None)
            if child is not None:
                child.wait(timeout=10)
            (self.layout.run / f"{name}.pid").unlink(missing_ok=True)

    def _running(self, name: str, pid: int) -> bool:
        child = self._procs.get(name)
        if child is not None:
            return child.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def main(argv: list[str] | None = None) -> int:
    """``up`` (set up + start, prints the env), ``down`` (stop by pid files), ``env``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("up", "down", "env") or STATE_ENV not in os.environ:
        sys.stderr.write(f"usage: {STATE_ENV}=<dir> python -m testbed.dirac_server up|down|env\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    harness = Harness()
    if args[0] == "down":
        harness.stop()
        return 0
    if args[0] == "up":
        harness.setup()
        harness.start()
    for key in ("DIRAC_ROOT_PATH", "X509_CERT_DIR", "X509_USER_PROXY", "PATH"):
        sys.stdout.write(f"export {key}={harness.env()[key]}\n")
    return 0
