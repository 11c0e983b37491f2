#!/usr/bin/env python3
"""Writes the seeds of the fuse fuzz target into Fuzz/corpus-fuse.

Each seed is a run of FUSE requests as the kernel writes them to /dev/fuse
(fuse_in_header, then the opcode's body, little-endian x86-64 layouts of
<linux/fuse.h>), as Fuzz/FUSEFuzz.swift reads them. Node ids are computed
as KHOControlFS's ControlTree.nodeID does, so the lookups, reads and writes
reach the files of the fuzzer's tree. Run it again after changing a seed;
the output is committed so that fuzzing needs no Python.
"""

import os
import struct

OPCODES = dict(
    LOOKUP=1, FORGET=2, GETATTR=3, SETATTR=4, READLINK=5, SYMLINK=6, MKNOD=8, MKDIR=9,
    UNLINK=10, RMDIR=11, RENAME=12, LINK=13, OPEN=14, READ=15, WRITE=16, STATFS=17,
    RELEASE=18, FSYNC=20, SETXATTR=21, GETXATTR=22, LISTXATTR=23, FLUSH=25, INIT=26,
    OPENDIR=27, READDIR=28, RELEASEDIR=29, FSYNCDIR=30, ACCESS=34, CREATE=35,
    INTERRUPT=36, DESTROY=38, BATCH_FORGET=42, READDIRPLUS=44, RENAME2=45)
ROOT = 1
O_RDONLY, O_WRONLY, O_RDWR, O_TRUNC = 0, 1, 2, 0o1000
FATTR_MODE, FATTR_UID, FATTR_SIZE = 1, 2, 8


def node(path, directory=False):
    """ControlTree.nodeID: FNV-1a 64 of "d:" or "f:" and the path, top bit cleared."""
    h = 0xCBF29CE484222325
    for b in (("d:" if directory else "f:") + path).encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class Stream:
    def __init__(self):
        self.data = b""
        self.unique = 2

    def request(self, opcode, nodeid=0, body=b""):
        # fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
        header = struct.pack("<IIQQIIIHH", 40 + len(body), OPCODES[opcode], self.unique,
                             nodeid, 0, 0, 4242, 0, 0)
        self.unique += 2
        self.data += header + body
        return self


def init_in(major=7, minor=38, flags=0x1 | 0x8 | 0x20 | 0x40000000, flags2=0):
    # fuse_init_in: major, minor, max_readahead, flags, flags2, unused[11]
    return struct.pack("<IIIII11I", major, minor, 131072, flags, flags2, *([0] * 11))


def open_in(flags):
    return struct.pack("<II", flags, 0)


def read_in(offset, size, fh=0):
    # fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding
    return struct.pack("<QQIIQII", fh, offset, size, 0, 0, 0, 0)


def write_in(offset, data, size=None):
    # fuse_write_in: fh, offset, size, write_flags, lock_owner, flags, padding; then data
    size = len(data) if size is None else size
    return struct.pack("<QQIIQII", 0, offset, size, 0, 0, 0, 0) + data


def release_in():
    return struct.pack("<QIIQ", 0, 0, 0, 0)


def setattr_in(valid, size=0, mode=0):
    # fuse_setattr_in: valid, padding, fh, size, lock_owner, atime, mtime, ctime,
    # atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5
    return struct.pack("<IIQQQQQQIIIIIIII", valid, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mode,
                       0, 0, 0, 0)


def name(text):
    return text.encode() + b"\0"


def open_file(s, path, flags):
    """LOOKUP every component of path from the root, then OPEN the file."""
    parent = ROOT
    parts = path.split("/")
    for i, part in enumerate(parts):
        s.request("LOOKUP", parent, name(part))
        parent = node("/".join(parts[: i + 1]), directory=i < len(parts) - 1)
    s.request("OPEN", parent, open_in(flags))
    return parent


def seeds():
    yield "init", Stream().request("INIT", 0, init_in())
    yield "init-old-kernel", Stream().request("INIT", 0, init_in(minor=26)[:16])
    yield "init-major8", Stream().request("INIT", 0, init_in(major=8)).request(
        "INIT", 0, init_in(minor=31))
    yield "init-too-old", Stream().request("INIT", 0, init_in(minor=20))

    s = Stream().request("INIT", 0, init_in())
    active = open_file(s, "kernel/kho/active", O_RDWR)
    s.request("GETATTR", active, struct.pack("<IIQ", 0, 0, 0))
    s.request("READ", active, read_in(0, 4096))
    s.request("WRITE", active, write_in(0, b"1\n"))
    s.request("READ", active, read_in(0, 4096))
    s.request("FLUSH", active, struct.pack("<QIIQ", 0, 0, 0, 0))
    s.request("RELEASE", active, release_in())
    s.request("FORGET", active, struct.pack("<Q", 1))
    yield "active", s

    s = Stream()
    s.request("OPENDIR", ROOT, open_in(O_RDONLY))
    s.request("READDIR", ROOT, read_in(0, 4096))
    kernel = node("kernel", True)
    s.request("LOOKUP", ROOT, name("kernel"))
    s.request("READDIR", kernel, read_in(0, 4096))
    s.request("READDIR", kernel, read_in(2, 48))
    s.request("READDIR", kernel, read_in(1 << 40, 4096))
    s.request("READDIRPLUS", kernel, read_in(0, 4096))
    s.request("RELEASEDIR", kernel, release_in())
    yield "readdir", s

    s = Stream()
    image = open_file(s, "kernel/kexec/image", O_WRONLY | O_TRUNC)
    s.request("WRITE", image, write_in(0, b"/usr/bin/svc\n--port\n"))
    s.request("WRITE", image, write_in(20, b"11211\n"))
    s.request("READ", image, read_in(0, 4096))
    mode = open_file(s, "kernel/kexec/mode", O_RDWR)
    s.request("WRITE", mode, write_in(0, b"overlapped\n"))
    s.request("READ", mode, read_in(0, 64))
    loaded = open_file(s, "kernel/kexec_loaded", O_RDONLY)
    s.request("READ", loaded, read_in(0, 4096))
    execute = open_file(s, "kernel/kexec/execute", O_WRONLY)
    s.request("WRITE", execute, write_in(0, b"1\n"))
    unload = open_file(s, "kernel/kexec/unload", O_WRONLY)
    s.request("WRITE", unload, write_in(0, b"1"))
    s.request("WRITE", image, write_in(0, b"/bin/a\0arg\nwith newline\0"))
    s.request("READ", image, read_in(3, 7))
    yield "kexec", s

    s = Stream()
    active = node("kernel/kho/active")
    dt = node("kernel/kho/dt")
    s.request("LOOKUP", node("kernel/kho", True), name("dt"))
    s.request("WRITE", active, write_in(0, b"1"))
    s.request("LOOKUP", node("kernel/kho", True), name("dt"))
    s.request("GETATTR", dt)
    s.request("OPEN", dt, open_in(O_RDONLY))
    s.request("READ", dt, read_in(4096, 4096))
    s.request("WRITE", active, write_in(0, b"0\n"))
    s.request("READ", dt, read_in(0, 16))
    s.request("READ", node("firmware/kho/dt"), read_in(500, 0xFFFFFFFF))
    s.request("READ", node("kernel/kho/dt_max"), read_in(0xFFFFFFFFFFFFFFFF, 10))
    yield "blob", s

    s = Stream()
    dtmax = open_file(s, "kernel/kho/dt_max", O_RDWR)
    s.request("SETATTR", dtmax, setattr_in(FATTR_SIZE))
    s.request("SETATTR", dtmax, setattr_in(FATTR_MODE, mode=0o777))
    s.request("SETATTR", node("kernel/kho/scratch_len"), setattr_in(FATTR_SIZE))
    s.request("SETATTR", ROOT, setattr_in(FATTR_SIZE))
    s.request("WRITE", dtmax, write_in(0, b"0x" + b"f" * 5000))
    s.request("WRITE", dtmax, write_in(0, b"0x10", size=100))
    s.request("OPEN", node("kernel/kho/scratch_phys"), open_in(O_WRONLY))
    s.request("OPEN", node("kernel/sealed"), open_in(O_RDONLY))
    s.request("READ", node("kernel/failing"), read_in(0, 10))
    s.request("WRITE", node("kernel/failing"), write_in(0, b"x"))
    s.request("OPEN", ROOT, open_in(O_RDONLY))
    s.request("OPENDIR", dtmax, open_in(O_RDONLY))
    yield "refusals", s

    s = Stream()
    s.request("STATFS", ROOT)
    s.request("ACCESS", ROOT, struct.pack("<II", 4, 0))
    s.request("ACCESS", 12345, struct.pack("<II", 4, 0))
    s.request("CREATE", ROOT, struct.pack("<IIII", O_WRONLY, 0o644, 0o22, 0) + name("new"))
    s.request("MKDIR", ROOT, struct.pack("<II", 0o755, 0o22) + name("d"))
    s.request("UNLINK", node("kernel", True), name("kexec_loaded"))
    s.request("RENAME2", ROOT, struct.pack("<QII", ROOT, 0, 0) + name("a") + name("b"))
    s.request("GETXATTR", ROOT, struct.pack("<II", 64, 0) + name("security.selinux"))
    s.request("LISTXATTR", ROOT, struct.pack("<II", 0, 0))
    s.request("READLINK", ROOT)
    s.request("FSYNC", ROOT, struct.pack("<QII", 0, 0, 0))
    s.request("FSYNCDIR", ROOT, struct.pack("<QII", 0, 0, 0))
    s.request("INTERRUPT", 0, struct.pack("<Q", 6))
    s.request("BATCH_FORGET", 0, struct.pack("<II", 2, 0) + struct.pack("<QQ", 5, 1) * 2)
    s.request("LOOKUP", ROOT, b"no-terminator")
    s.request("DESTROY", 0)
    yield "misc", s

    # A request whose length field says more than was read, after a good one.
    s = Stream().request("GETATTR", ROOT)
    s.data += struct.pack("<IIQQIIIHH", 4000, OPCODES["READ"], 9, ROOT, 0, 0, 0, 0, 0)
    yield "truncated", s


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus-fuse")
    os.makedirs(out, exist_ok=True)
    for seed_name, stream in seeds():
        with open(os.path.join(out, seed_name), "wb") as f:
            f.write(stream.data)


if __name__ == "__main__":
    main()
