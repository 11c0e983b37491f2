#!/usr/bin/env python3
"""A successor that damages the handover it is given, then becomes the real one.

`kho exec MOUNT -- tamper_successor.py ACTION [ACTION...] -- SERVER ARGS...`

It runs where the next image would run: KHO_HANDOVER names the arena fd,
which this process inherited, and the record in it. Each ACTION changes what
the next image will find, then this process execs SERVER with the fds and the
environment it was given (changed as the actions say):

  format-version=N    the store node's format-version becomes N (a downgrade
                      from a newer build, or an upgrade from an older one);
                      the record's checksum is recomputed, so only the store
                      refuses it
  env:NAME=VALUE      sets NAME in the environment of the next image
  unset:NAME          removes NAME from it
  store:KIND:SEED     damages the handed-over store region (see DAMAGE); the
                      blob and the record are untouched
  close-fds           closes every fd the handover named (KHO_FDS)

The store layout below is Sources/KHOCacheStore/Layout.swift's (format 2).
"""
import os
import random
import struct
import sys

import libfdt

# Sources/KHOCacheStore/Layout.swift
HEADER = dict(bucket_count=40, hash_offset=48, page_table_offset=56, slab_offset=64,
              page_count=72, class_count=80, page_size=32, clock=120, cas=112,
              pages_used=104, class_table=1024)
CLASS_ENTRY = dict(chunk_size=0, per_page=8, free_head=16, free_count=24, lru_head=32,
                   lru_tail=40, item_count=48, page_count=56, size=64)
ITEM = dict(hash_next=0, lru_prev=8, lru_next=16, cas=24, exptime=32, time=36, flags=40,
            value_length=44, hash=48, key_length=52, class_id=53, item_flags=54, checksum=56,
            header=64)


def u64(buf, off):
    return struct.unpack_from("<Q", buf, off)[0]


def fnv1a64(data, h=0xcbf29ce484222325):
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


class Handover:
    def __init__(self):
        fields = dict(p.split("=", 1) for p in os.environ["KHO_HANDOVER"].split(",")[1:])
        self.fd = int(fields["fd"])
        self.record_at = int(fields["record"], 16)
        self.record = bytearray(os.pread(self.fd, 128, self.record_at))
        self.blob_at = u64(self.record, 56)
        self.blob_end = self.blob_at + u64(self.record, 64)
        self.cache_at, self.cache_count = u64(self.record, 72), u64(self.record, 80)

    def blob(self):
        return bytearray(os.pread(self.fd, self.blob_end - self.blob_at, self.blob_at))

    def store_range(self):
        fdt = libfdt.Fdt(bytes(self.blob()))
        node = fdt.path_offset("/kho-cache")
        mem = fdt.getprop(node, "mem")
        return struct.unpack("<QQ", bytes(mem))

    def rewrite_blob(self, blob):
        assert len(blob) == self.blob_end - self.blob_at
        os.pwrite(self.fd, bytes(blob), self.blob_at)
        self.reseal()

    def reseal(self):
        """The record's FNV-1a over its first 88 bytes, the mem cache, the blob."""
        head = bytes(self.record[:88])
        cache = os.pread(self.fd, self.cache_count * 16, self.cache_at)
        blob = os.pread(self.fd, self.blob_end - self.blob_at, self.blob_at)
        struct.pack_into("<Q", self.record, 88, fnv1a64(blob, fnv1a64(cache, fnv1a64(head))))
        os.pwrite(self.fd, bytes(self.record), self.record_at)


def set_format_version(handover, version):
    fdt = libfdt.Fdt(bytes(handover.blob()))
    node = fdt.path_offset("/kho-cache")
    fdt.setprop(node, "format-version", struct.pack("<I", version))
    handover.rewrite_blob(fdt.as_bytearray())


class Region:
    """The store region in the arena, read and written with pread/pwrite."""

    def __init__(self, fd, base, size):
        self.fd, self.base, self.size = fd, base, size
        self.header = bytearray(os.pread(fd, 8192, base))

    def h(self, name):
        return u64(self.header, HEADER[name])

    def read(self, off, n):
        return os.pread(self.fd, n, self.base + off)

    def write(self, off, data):
        os.pwrite(self.fd, data, self.base + off)

    def r64(self, off):
        return struct.unpack("<Q", self.read(off, 8))[0]

    def w64(self, off, v):
        self.write(off, struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF))

    def w32(self, off, v):
        self.write(off, struct.pack("<I", v & 0xFFFFFFFF))

    def w8(self, off, v):
        self.write(off, bytes([v & 0xFF]))

    def buckets(self):
        count, at = self.h("bucket_count"), self.h("hash_offset")
        raw = self.read(at, count * 8)
        return [(at + i * 8, u64(raw, i * 8)) for i in range(count)]

    def items(self, limit=100000):
        """Items reachable from the hash index. Earlier damage the store has
        not walked into yet may still be there: offsets outside the slab
        area, misaligned ones and loops end a chain."""
        out, seen = [], set()
        slab = self.h("slab_offset")
        for _, head in self.buckets():
            item = head
            while (item and len(out) < limit and item not in seen and item % 8 == 0
                   and slab <= item <= self.size - ITEM["header"]):
                seen.add(item)
                out.append(item)
                item = self.r64(item + ITEM["hash_next"])
        return out

    def class_entry(self, class_id):
        return HEADER["class_table"] + (class_id - 1) * CLASS_ENTRY["size"]


def damage(region, kind, seed):
    rng = random.Random(seed)
    items = region.items()
    some = rng.sample(items, min(len(items), 16)) if items else []
    slab = region.h("slab_offset")
    if kind == "random":  # random words anywhere past the checksummed geometry
        for _ in range(64):
            region.w64(rng.randrange(96, region.size - 8) & ~7, rng.getrandbits(64))
    elif kind == "random-slab":  # random words among the items
        for _ in range(256):
            region.w64(rng.randrange(slab, region.size - 8) & ~7, rng.getrandbits(64))
    elif kind == "random-bytes":
        for _ in range(256):
            region.w8(rng.randrange(slab, region.size), rng.getrandbits(8))
    elif kind == "bucket-heads":  # outside, misaligned, into the header, into the index
        bad = [region.size + 4096, 1 << 62, slab + 3, 16, region.h("hash_offset") + 8,
               region.size - 8, 0xFFFFFFFFFFFFFFFF]
        for at, head in rng.sample(region.buckets(), 64):
            region.w64(at, rng.choice(bad))
    elif kind == "self-chain":
        for item in some:
            region.w64(item + ITEM["hash_next"], item)
    elif kind == "cycle":
        for a, b in zip(some[::2], some[1::2]):
            region.w64(a + ITEM["hash_next"], b)
            region.w64(b + ITEM["hash_next"], a)
    elif kind == "huge-value":
        for item in some:
            region.w32(item + ITEM["value_length"], rng.choice([16 << 20, 0xFFFFFFFF, 1 << 31]))
    elif kind == "key-length":
        for item in some:
            region.w8(item + ITEM["key_length"], rng.choice([0, 251, 255]))
    elif kind == "class-id":
        for item in some:
            region.w8(item + ITEM["class_id"], rng.choice([0, 63, 200, 255]))
    elif kind == "lru-links":
        for item in some:
            region.w64(item + ITEM[rng.choice(["lru_prev", "lru_next"])],
                       rng.choice([item, 8, region.size * 2, slab + 1, rng.getrandbits(64)]))
    elif kind == "free-list":
        for class_id in range(1, region.h("class_count") + 1):
            entry = region.class_entry(class_id)
            if region.r64(entry + CLASS_ENTRY["free_head"]):
                head = region.r64(entry + CLASS_ENTRY["free_head"])
                region.w64(head + ITEM["hash_next"], rng.choice([head, 24, region.size + 8]))
    elif kind == "clock":
        region.w64(HEADER["clock"], 1 << 40)
    elif kind == "counters":
        for off in range(144, 144 + 26 * 8, 8):
            region.w64(off, rng.getrandbits(64))
    else:
        raise SystemExit(f"tamper_successor: unknown damage {kind}")


def main(argv):
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    actions, server = argv[:split], argv[split + 1:]
    env = dict(os.environ)
    handover = Handover()
    for action in actions:
        if action.startswith("format-version="):
            set_format_version(handover, int(action.split("=", 1)[1]))
        elif action.startswith("env:"):
            name, value = action[4:].split("=", 1)
            env[name] = value
        elif action.startswith("unset:"):
            env.pop(action[6:], None)
        elif action.startswith("store:"):
            _, kind, seed = action.split(":")
            base, size = handover.store_range()
            damage(Region(handover.fd, base, size), kind, int(seed))
        elif action == "close-fds":
            for item in os.environ.get("KHO_FDS", "").split(","):
                if ":" in item:
                    os.close(int(item.split(":")[1]))
        else:
            raise SystemExit(f"tamper_successor: unknown action {action}")
    os.execve(server[0], server, env)


if __name__ == "__main__":
    main(sys.argv[1:])
