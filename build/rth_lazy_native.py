# PyInstaller runtime hook of the one-file pilot: native libraries unpacked on first use.
#
# A one-file program unpacks every bundled library at every start. cryptography's native
# library is 11.6 MB (40 % of all that), and a pilot needs it only when it reads an X.509
# proxy. pilot.spec therefore bundles it zlib-compressed as data under _lazy/ (a 4 MB copy
# at start), and this finder inflates it next to where PyInstaller would have put it, the
# first time it is imported. It lands inside the unpack directory, which the bootloader
# removes at exit as usual.
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
        root = sys._MEIPASS
        dest = os.path.join(root, relative)
        with cls.lock:
            if not os.path.exists(dest):
                cls.unpack(os.path.join(root, "_lazy", relative + ".z"), dest)
        return importlib.util.spec_from_file_location(fullname, dest)

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


sys.meta_path.insert(0, LazyNativeFinder)
