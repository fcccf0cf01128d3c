# PyInstaller runtime hook of the one-file pilot: native libraries unpacked on first use.
#
# A one-file program unpacks every bundled library at every start. cryptography's native
# library is 11.6 MB (40 % of all that), and a pilot needs it only when it reads an X.509
# proxy. pilot.spec therefore bundles it zlib-compressed as data under _lazy/ (a 4 MB copy
# at start), and this finder inflates it next to where PyInstaller would have put it, the
# first time it is imported. It lands inside the unpack directory, which the bootloader
# removes at exit as usual. When the pilot is going to read a proxy (the --proxy option, or
# what pilot.grid.gridenv.find_proxy finds), the unpacking starts at once in
# a thread: zlib and the writes release the GIL, so it overlaps the pilot's own start-up on
# a second core instead of delaying the credentials check.
# ruff: noqa
import os
import sys
import threading
import zlib
import importlib.util

LAZY_MODULES = {"cryptography.hazmat.bindings._rust": "cryptography/hazmat/bindings/_rust.abi3.so"}
CHUNK = 1 << 20


class LazyNativeFinder:
    """A meta path finder that unpacks a bundled native module before it is loaded."""

    lock = threading.Lock()

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        relative = LAZY_MODULES.get(fullname)
        if relative is None:
            return None
        return importlib.util.spec_from_file_location(fullname, cls.ensure(relative))

    @classmethod
    def ensure(cls, relative):
        """The unpacked library's path, unpacking it first if no one has yet."""
        root = sys._MEIPASS
        dest = os.path.join(root, relative)
        with cls.lock:
            if not os.path.exists(dest):
                cls.unpack(os.path.join(root, "_lazy", relative + ".z"), dest)
        return dest

    @staticmethod
    def unpack(source, dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        partial = f"{dest}.{os.getpid()}.part"
        inflate = zlib.decompressobj()
        with open(source, "rb") as src, open(partial, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(inflate.decompress(chunk))
            out.write(inflate.flush())
        os.chmod(partial, 0o700)
        os.replace(partial, dest)

    @classmethod
    def invalidate_caches(cls):
        pass


def proxy_expected():
    """A proxy given to the pilot (--proxy, PILOT_PROXY) or found where it looks for one."""
    if os.environ.get("PILOT_PROXY"):
        return True
    if any(arg == "--proxy" or arg.startswith("--proxy=") for arg in sys.argv):
        return True
    try:
        from pilot.grid.gridenv import find_proxy  # the pilot's own discovery, no X.509 parsing
    except Exception:
        return False
    return find_proxy() is not None


def prefetch(relative):
    try:
        LazyNativeFinder.ensure(relative)
    except OSError:
        pass  # a full or read-only unpack directory: the import tries again and reports it


sys.meta_path.insert(0, LazyNativeFinder)
if proxy_expected():
    for relative in LAZY_MODULES.values():
        # "fork-safe:" (pilot.job.guardian.FORK_SAFE): it only inflates a file, so the
        # guardian forks beside it instead of waiting for it to end
        name = "fork-safe:unpack " + relative
        threading.Thread(target=prefetch, args=(relative,), daemon=True, name=name).start()
