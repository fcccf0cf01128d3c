"""Run a DIRAC server command (``dirac-service``/``dirac-executor``) listening on 127.0.0.1 only.

DIRAC's DISET services bind ``("", port)`` on an IPv6 dual-stack socket, i.e. on every
interface. The test harness must listen on loopback only, so this launcher (run with the
DIRAC venv's python, never imported by the pilot) narrows the listening socket to
127.0.0.1 before handing over to the real entry point::

    python loopback.py dirac-service WorkloadManagement/Matcher [options]
"""

import socket
import sys

from DIRAC.Core.DISET.private.Transports import M2SSLTransport
from M2Crypto import SSL

_ENTRY_POINTS = {
    "dirac-service": "DIRAC.Core.scripts.dirac_service",
    "dirac-executor": "DIRAC.Core.scripts.dirac_executor",
}


def _patch_listen_address() -> None:
    transport = M2SSLTransport.SSLTransport
    original = transport.initAsServer

    def init_as_server(self):  # type: ignore[no-untyped-def]
        self.stServerAddress = ("127.0.0.1", self.stServerAddress[1])
        return original(self)

    def ipv4_connection(self):  # type: ignore[no-untyped-def]
        return SSL.Connection(self._SSLTransport__ctx, family=socket.AF_INET)

    transport.initAsServer = init_as_server
    transport._SSLTransport__getConnection = ipv4_connection


def main() -> int:
    command = sys.argv[1]
    module = __import__(_ENTRY_POINTS[command], fromlist=["main"])
    _patch_listen_address()
    sys.argv = [command, *sys.argv[2:]]
    return int(module.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
