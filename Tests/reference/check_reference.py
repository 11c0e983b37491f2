#!/usr/bin/env python3
"""Compares `kho dt` with the reference tools on many device trees.

References: dtc 1.6.1 (Debian's device-tree-compiler) for `dtc -I dtb -O dts`
and `dtc -I dtb -O dtb`, pylibfdt's FdtSw for libfdt's sequential-writer
layout.

Run:  python3 Tests/reference/check_reference.py --kho .build/debug/kho
      (or under pytest: KHO=path/to/kho pytest Tests/reference/check_reference.py)

What it does:
1. Well-formed trees (random with a fixed seed, deep, wide, empty, many
   suffix-sharing names, reservations, DTS sources compiled by dtc, all
   six block orders of versions 16 and 17) are each checked four ways:
   convert --layout libfdt == the FdtSw blob, convert --layout dtc ==
   `dtc -I dtb -O dtb`, dump == `dtc -I dtb -O dts` (when dtc accepts the
   tree; refusals are recorded), check exits 0.
2. Malformed blobs (the kinds of dtc's own test suite, hand-made token
   errors, every truncation of small blobs, bit flips, byte smashes, random
   header fields): `kho dt check` must exit 0 or 1 with "offset N: kind:",
   never crash or hang; when dtc and kho both accept, the dumps must match.
   Blobs dtc accepts and kho refuses are listed with a verdict.

The last line is "N passed, M failed"; the exit status is 1 on a failure.
"""

import argparse
import collections
import concurrent.futures
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time

import libfdt

FDT_MAGIC = 0xD00DFEED
BEGIN_NODE, END_NODE, PROP, NOP, END = 1, 2, 3, 4, 9
NODE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,._+-"
PROP_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,._+*#?-"
# Names dtc's checks treat specially (errors or silent fix-ups); trees that
# use them on purpose are built separately.
RESERVED_PROPS = {"name", "phandle", "linux,phandle", "#address-cells", "#size-cells",
                  "compatible", "model", "status", "device_type", "label", "reg",
                  "ranges", "interrupts", "interrupt-parent", "interrupts-extended",
                  "clocks", "gpios", "dmas", "pwms", "resets", "phys", "cooling-device",
                  "interconnects", "iommus", "mboxes", "msi-parent", "mux-controls",
                  "io-channels", "power-domains", "sound-dai", "thermal-sensors",
                  "hwlocks", "nvmem-cells", "dma-ranges", "interrupt-map",
                  "interrupt-controller", "#interrupt-cells", "gpio", "gpio-hog",
                  "alias", "aliases"}
OFFSET_RE = re.compile(rb"offset \d+: [A-Za-z]+: ")


# --------------------------------------------------------------------------
# Trees and the reference writer


class Node:
    __slots__ = ("name", "props", "children")

    def __init__(self, name, props=None, children=None):
        self.name = name
        self.props = props if props is not None else []
        self.children = children if children is not None else []


class Tree:
    def __init__(self, root, reservations=()):
        self.root = root
        self.reservations = list(reservations)


def fdtsw_blob(tree):
    """The blob pylibfdt's FdtSw (libfdt's fdt_sw) writes for `tree`."""
    sw = libfdt.FdtSw()
    for address, size in tree.reservations:
        sw.add_reservemap_entry(address, size)
    sw.finish_reservemap()
    # Iterative, so that deep trees do not hit Python's recursion limit.
    stack = [(tree.root, False)]
    while stack:
        node, closing = stack.pop()
        if closing:
            sw.end_node()
            continue
        sw.begin_node(node.name)
        for name, value in node.props:
            sw.property(name, value)
        stack.append((node, True))
        for child in reversed(node.children):
            stack.append((child, False))
    fdt = sw.as_fdt()
    return bytes(fdt.as_bytearray()[: fdt.totalsize()])


def random_value(rng):
    shape = rng.randrange(14)
    printable = [chr(c) for c in range(0x20, 0x7F)]
    escapes = ["\a", "\b", "\t", "\n", "\v", "\f", "\r", "\\", '"']
    if shape == 0:
        return b""
    if shape == 1:
        return ("".join(rng.choice(printable) for _ in range(rng.randrange(1, 24)))).encode() + b"\0"
    if shape == 2:
        parts = ["".join(rng.choice(printable + escapes) for _ in range(rng.randrange(1, 10)))
                 for _ in range(rng.randrange(1, 5))]
        return b"".join(p.encode() + b"\0" for p in parts)
    if shape == 3:  # string list with empty members: NUL heavy
        parts = [rng.choice(["", "a", "", "xy"]) for _ in range(rng.randrange(1, 6))]
        return b"".join(p.encode() + b"\0" for p in parts)
    if shape == 4:
        return b"".join(struct.pack(">I", rng.choice([0, 1, 0xFF, 0xFFFFFFFF, rng.getrandbits(32)]))
                        for _ in range(rng.randrange(1, 9)))
    if shape == 5:
        return b"".join(struct.pack(">Q", rng.getrandbits(64)) for _ in range(rng.randrange(1, 4)))
    if shape == 6:
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 3, 5, 6, 7, 9, 13])))
    if shape == 7:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
    if shape == 8:  # tricky guesses
        return rng.choice([b"\0", b"\0\0", b"\0\0\0\0", b"a\0\0\0", b"ab\0\0", b"ab\0", b"a\0b\0",
                           b"\0a\0", b"abc\0\0\0\0\0", b"\x7f\0", b"\x80\0", b"\xff\0\0\0",
                           b"a\0\0", b"\x07\x08\x09\x0a\x0b\x0c\x0d\0", b"\\\"\0", b"\x1b\0",
                           b"a\0\0\0\0\0\0\0", b"abcd", b"abc\0", b"\0\0\0a"])
    if shape == 9:  # strings of all the escapes
        return "".join(rng.choice(escapes + ["a", "Z", " "]) for _ in range(rng.randrange(1, 16))).encode() + b"\0"
    if shape == 10:  # printable bytes without a NUL: cells or bytes
        return "".join(rng.choice(printable) for _ in range(rng.randrange(1, 16))).encode()
    if shape == 11:  # a long string
        return ("".join(rng.choice(printable) for _ in range(rng.randrange(100, 600)))).encode() + b"\0"
    if shape == 12:  # long cells
        return b"".join(struct.pack(">I", rng.getrandbits(32)) for _ in range(rng.randrange(20, 200)))
    return bytes(rng.choice([0, 0, 0x41, 0x0A, 0x80, 0xFF]) for _ in range(rng.randrange(1, 12)))


def random_name(rng, chars, length):
    return "".join(rng.choice(chars) for _ in range(length))


def random_node_name(rng, taken):
    while True:
        name = random_name(rng, NODE_CHARS, rng.randrange(1, 14))
        if rng.random() < 0.4:
            name += "@" + rng.choice(["0", "1", "10", "ff", "1,2", "deadbeef"] + [random_name(rng, NODE_CHARS, 3)])
        if name not in taken:
            taken.add(name)
            return name


def random_prop_name(rng, taken, pool):
    while True:
        if pool and rng.random() < 0.5:
            name = rng.choice(pool)
        else:
            name = random_name(rng, PROP_CHARS, rng.randrange(1, 12))
            pool.append(name)
        if name not in taken and name not in RESERVED_PROPS:
            taken.add(name)
            return name


def random_tree(rng, max_depth, max_children, max_props):
    pool = []

    def make(name, depth):
        taken = set()
        props = [(random_prop_name(rng, taken, pool), random_value(rng))
                 for _ in range(rng.randrange(0, max_props + 1))]
        children = []
        if depth < max_depth:
            names = set()
            children = [make(random_node_name(rng, names), depth + 1)
                        for _ in range(rng.randrange(0, max_children + 1))]
        return Node(name, props, children)

    reservations = [(rng.getrandbits(rng.choice([12, 32, 64])), rng.getrandbits(rng.choice([12, 32, 64])) or 1)
                    for _ in range(rng.choice([0, 0, 1, 3]))]
    return Tree(make("", 0), reservations)


def generated_trees(seed):
    rng = random.Random(seed)
    trees = []
    trees.append(("empty-root", Tree(Node(""))))
    trees.append(("empty-root-memreserve", Tree(Node(""), [(0x1000, 0x2000), (0, 1), (2**64 - 1, 2**64 - 1)])))
    trees.append(("empty-props", Tree(Node("", [("a", b""), ("b", b"")], [Node("x", [("a", b"")])]))))
    for i in range(110):
        trees.append((f"random-{i}", random_tree(rng, rng.randrange(0, 6), rng.randrange(0, 6), rng.randrange(0, 9))))
    # Deep: a chain of 200 nodes.
    leaf = Node("leaf", [("depth", struct.pack(">I", 200))])
    for d in range(199, 0, -1):
        leaf = Node(f"level@{d:x}", [("depth", struct.pack(">I", d)), ("s", b"x\0")], [leaf])
    trees.append(("deep-200", Tree(Node("", [("model", b"deep\0")], [leaf]))))
    # Wide: 2000 children of the root.
    children = [Node(f"child@{i:x}", [("reg", struct.pack(">II", i, 1)), ("n", str(i).encode() + b"\0")])
                for i in range(2000)]
    trees.append(("wide-2000", Tree(Node("", [("#address-cells", b"\0\0\0\1"), ("#size-cells", b"\0\0\0\1")],
                                            children))))
    # Many distinct names, with lots of suffix sharing, in both orders
    # (short then long, long then short, and shuffled).
    names = set()
    stems = ["reg", "g", "eg", "interrupt-reg", "interrupts", "s", "ts", "rupts", "x", "-reg",
             "clock-names", "names", "es", "ames"]
    names.update(stems)
    while len(names) < 3000:
        base = random_name(rng, PROP_CHARS, rng.randrange(1, 10))
        names.add(base)
        names.add(base + rng.choice(stems))
        names.add(base[rng.randrange(len(base)):])
    names = sorted(n for n in names if n not in ("name", "phandle", "linux,phandle"))
    for order in ("short-first", "long-first", "shuffled"):
        ordered = list(names)
        if order == "short-first":
            ordered.sort(key=len)
        elif order == "long-first":
            ordered.sort(key=len, reverse=True)
        else:
            rng.shuffle(ordered)
        nodes = []
        for k in range(0, len(ordered), 100):
            nodes.append(Node(f"n{k // 100}", [(n, struct.pack(">I", j)) for j, n in enumerate(ordered[k:k + 100])]))
        # Reuse names across nodes, so lookups hit old strings too.
        nodes.append(Node("again", [(n, b"") for n in rng.sample(ordered, 200)]))
        trees.append((f"strings-3000-{order}", Tree(Node("", [], nodes), [(0x100000, 0x1000)] * 2)))
    # Suffix sharing, hand-picked: each pair in both orders.
    trees.append(("suffix-pairs", Tree(Node("", [], [
        Node("a", [("reg", b""), ("interrupt-reg", b""), ("g", b""), ("eg", b"")]),
        Node("b", [("interrupt-reg", b""), ("reg", b""), ("eg", b""), ("g", b"")]),
        Node("c", [("xreg", b""), ("yreg", b""), ("reg", b""), ("zzreg", b"")]),
    ]))))
    trees.append(("memreserve-many", Tree(Node("", [("x", b"\0")]),
                                          [(rng.getrandbits(64), rng.getrandbits(64) or 1) for _ in range(40)])))
    # Trees dtc refuses for semantic reasons (recorded, not compared).
    trees.append(("dup-node-names", Tree(Node("", [], [Node("a"), Node("a")]))))
    trees.append(("dup-prop-names", Tree(Node("", [("p", b"1\0"), ("p", b"2\0")]))))
    trees.append(("phandle-zero", Tree(Node("", [], [Node("a", [("phandle", b"\0\0\0\0")])]))))
    # A "name" property equal to the node's base name: dtc deletes it.
    trees.append(("name-property", Tree(Node("", [], [Node("dev@10", [("name", b"dev\0"), ("x", b"")])]))))
    trees.append(("name-property-wrong", Tree(Node("", [], [Node("dev@10", [("name", b"other\0")])]))))
    return trees


DTS_SOURCES = {
    "memreserve": """/dts-v1/;
/memreserve/ 0x10000000 0x4000;
/memreserve/ 0xffffffff00000000 0x100000000;
/ {
	model = "test";
	chosen { bootargs = "console=ttyS0 quiet"; };
	memory@0 { device_type = "memory"; reg = <0x0 0x10000000>; };
};
""",
    "escapes": r"""/dts-v1/;
/ {
	esc = "tab\there", "nl\n", "quote\"q", "back\\slash", "bell\a\b\v\f\r";
	hex = "\x01\x7f";
	octal = "\101\102";
	empty-strings = "", "", "a";
	nul-inside = "a\0b";
};
""",
    "bytes-bits": """/dts-v1/;
/ {
	#address-cells = <2>;
	#size-cells = <1>;
	b1 = [00];
	b3 = [01 02 03];
	b4 = [de ad be ef];
	b8 = [00 00 00 00 00 00 00 00];
	u64 = /bits/ 64 <0x123456789abcdef0 0x1>;
	u16 = /bits/ 16 <0x1234 0x5678 0x9abc>;
	u8 = /bits/ 8 <0x41 0x42 0x00>;
	mixed = "str", <0x1 0x2>, [03 04];
	lbl: labelled = <0x1>;
	node@1,2 {
		reg = <0x0 0x1 0x2>;
		sub { deeper { deepest { leaf; }; }; };
	};
	other_node-name.x+y {
		prop,with,commas = "v";
		#weird?prop* = <0xffffffff>;
	};
};
""",
    "nested": """/dts-v1/;
/ {
	a { b { c { d { e { f { g = "h"; }; }; }; }; }; };
	empty { };
	cpus { #address-cells = <1>; #size-cells = <0>;
		cpu@0 { reg = <0>; }; cpu@1 { reg = <1>; }; };
};
""",
}


def dts_trees(tmp, dtc):
    out = []
    for name, source in DTS_SOURCES.items():
        path = os.path.join(tmp, f"src-{name}.dts")
        with open(path, "w") as f:
            f.write(source)
        r = subprocess.run([dtc, "-q", "-I", "dts", "-O", "dtb", path], capture_output=True, timeout=20)
        if r.returncode != 0:
            raise SystemExit(f"dtc could not compile {name}: {r.stderr.decode()}")
        out.append((f"dts-{name}", r.stdout))
    return out


# --------------------------------------------------------------------------
# Raw blob surgery (malformed and re-laid-out blobs)


def u32(b, at):
    return struct.unpack_from(">I", b, at)[0]


def put32(b, at, v):
    struct.pack_into(">I", b, at, v & 0xFFFFFFFF)


def blocks(blob):
    """(rsvmap bytes incl. terminator, struct bytes, strings bytes)."""
    rsv_at, st_at, str_at = u32(blob, 16), u32(blob, 8), u32(blob, 12)
    at = rsv_at
    while True:
        a, s = struct.unpack_from(">QQ", blob, at)
        at += 16
        if a == 0 and s == 0:
            break
    return blob[rsv_at:at], blob[st_at:st_at + u32(blob, 36)], blob[str_at:str_at + u32(blob, 32)]


def assemble(rsv, st, strings, version=17, order="mts", boot=0, last_comp=16, pad_total=0):
    """A blob with its blocks in `order` (m = reservations, t = structure,
    s = strings), aligned as mangle-layout aligns them."""
    header_size = 40 if version >= 17 else 36
    out = bytearray(header_size)
    offsets = {}
    for block in order:
        data, align = {"m": (rsv, 8), "t": (st, 4), "s": (strings, 1)}[block]
        while len(out) % align:
            out.append(0)
        offsets[block] = len(out)
        out += data
    out += bytes(pad_total)
    put32(out, 0, FDT_MAGIC)
    put32(out, 4, len(out))
    put32(out, 8, offsets["t"])
    put32(out, 12, offsets["s"])
    put32(out, 16, offsets["m"])
    put32(out, 20, version)
    put32(out, 24, last_comp)
    put32(out, 28, boot)
    put32(out, 32, len(strings))
    if version >= 17:
        put32(out, 36, len(st))
    return bytes(out)


def tok(*words):
    return b"".join(struct.pack(">I", w) for w in words)


def node_begin(name):
    data = tok(BEGIN_NODE) + name + b"\0"
    return data + bytes(-len(data) % 4)


def prop(length, nameoff, value=b""):
    data = tok(PROP, length, nameoff) + value
    return data + bytes(-len(data) % 4)


def handmade_malformed(base):
    """Blobs of the kinds dtc's test suite (trees.S, run_tests.sh) uses,
    plus token-level errors, each built from scratch or from `base`."""
    cases = []
    rsv0 = bytes(16)
    strs = b"prop\0x\0"
    good_struct = node_begin(b"") + prop(4, 0, b"\0\0\0\1") + node_begin(b"sub") + tok(END_NODE, END_NODE, END)

    def add(name, st, strings=strs, rsv=rsv0, **kw):
        cases.append((name, assemble(rsv, st, strings, **kw)))

    add("good", good_struct)
    # dtc's truncated_property: a 4-byte property with no data before the end.
    add("truncated_property", node_begin(b"") + tok(PROP, 4, 0))
    add("truncated_property_len_past_struct", node_begin(b"") + tok(PROP, 64, 0, 0, END_NODE, END))
    # dtc's truncated_string: a name whose NUL is missing at the table's end.
    add("truncated_string", node_begin(b"") + prop(0, 0) + prop(0, 5) + tok(END_NODE, END), b"good\0bad")
    # dtc's truncated_memrsv: the reservation map's terminator is missing.
    st = node_begin(b"") + tok(END_NODE, END)
    blob = bytearray(assemble(rsv0, st, b"", order="tsm"))
    blob = blob[:-16] + struct.pack(">QQ", 0x12345678, 0x1000)
    put32(blob, 4, len(blob))
    cases.append(("truncated_memrsv", bytes(blob)))
    add("two_roots", node_begin(b"") + tok(END_NODE) + node_begin(b"") + tok(END_NODE, END))
    add("named_root", node_begin(b"fake") + tok(END_NODE, END))
    add("bad_node_char", node_begin(b"") + node_begin(b"sub$node") + tok(END_NODE, END_NODE, END))
    add("bad_node_format", node_begin(b"") + node_begin(b"subnode@1@2") + tok(END_NODE, END_NODE, END))
    add("bad_prop_char", node_begin(b"") + prop(4, 0, b"\0\0\0\1") + tok(END_NODE, END), b"prop$erty\0")
    # dtc's ovf_size_strings: size_dt_strings of 0xffffffff.
    blob = bytearray(assemble(rsv0, node_begin(b"") + prop(4, 0x10000000, bytes(4)) + tok(END_NODE, END), b"x\0"))
    put32(blob, 32, 0xFFFFFFFF)
    cases.append(("ovf_size_strings", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 36, 0xFFFFFFFF)
    cases.append(("ovf_size_struct", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 12, 0xFFFFFFF0)
    cases.append(("ovf_offset_strings", bytes(blob)))
    add("prop_len_ffffffff", node_begin(b"") + tok(PROP, 0xFFFFFFFF, 0) + tok(END_NODE, END))
    add("unknown_token", node_begin(b"") + tok(7, END_NODE, END))
    add("end_node_without_node", tok(END_NODE) + node_begin(b"") + tok(END_NODE, END))
    add("prop_outside_node", prop(0, 5) + node_begin(b"") + tok(END_NODE, END))
    add("prop_after_root_end", node_begin(b"") + tok(END_NODE) + prop(0, 5) + tok(END))
    add("prop_after_subnode", node_begin(b"") + node_begin(b"a") + tok(END_NODE) + prop(0, 5) + tok(END_NODE, END))
    add("empty_node_name", node_begin(b"") + node_begin(b"") + tok(END_NODE, END_NODE, END))
    add("nameoff_out_of_strings", node_begin(b"") + prop(0, 7) + tok(END_NODE, END))
    add("nameoff_huge", node_begin(b"") + prop(0, 0xFFFFFFF0) + tok(END_NODE, END))
    add("empty_prop_name", node_begin(b"") + prop(0, 0) + tok(END_NODE, END), b"\0x\0")
    add("unbalanced_end", node_begin(b"") + node_begin(b"a") + tok(END_NODE, END))
    add("no_end_token", node_begin(b"") + tok(END_NODE))
    add("end_before_root", tok(END))
    add("empty_struct", b"")
    add("nop_everywhere", tok(NOP) + node_begin(b"") + tok(NOP) + prop(4, 0, bytes(4)) + tok(NOP) +
        node_begin(b"sub") + tok(NOP, END_NODE, NOP, END_NODE, NOP, END))
    add("nop_inside_only", node_begin(b"") + tok(NOP) + prop(4, 0, bytes(4)) + tok(NOP, END_NODE, END))
    add("data_after_end", good_struct + tok(0xDEADBEEF, 0))
    add("node_name_unterminated", tok(BEGIN_NODE) + b"abcd")
    add("high_byte_node_name", node_begin(b"") + node_begin(b"caf\xc3\xa9") + tok(END_NODE, END_NODE, END))
    add("space_node_name", node_begin(b"") + node_begin(b"a b") + tok(END_NODE, END_NODE, END))
    add("version16", good_struct, version=16)
    add("version1", good_struct, version=1)
    add("version_huge", good_struct, version=0x7FFFFFFF, last_comp=0x7FFFFFFF)
    add("last_comp_18", good_struct, last_comp=18)
    add("boot_cpuid", good_struct, boot=0x12345678)
    add("rsv_addr_nonzero_size_zero", good_struct,
        rsv=struct.pack(">QQ", 0x1000, 0x10) + struct.pack(">QQ", 0x2000, 0) + struct.pack(">QQ", 0x3000, 0x30) + rsv0)
    add("rsv_addr_zero_size_nonzero", good_struct, rsv=struct.pack(">QQ", 0, 0x10) + rsv0)
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 16, 44)
    cases.append(("rsvmap_misaligned", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 8, u32(blob, 8) + 2)
    cases.append(("struct_misaligned", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 12, u32(blob, 8))
    cases.append(("strings_overlap_struct", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 16, u32(blob, 8))
    cases.append(("rsvmap_overlaps_struct", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 4, 39)
    cases.append(("totalsize_small", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 4, len(blob) + 1)
    cases.append(("totalsize_past_file", bytes(blob)))
    blob = bytearray(assemble(rsv0, good_struct, strs))
    put32(blob, 0, 0xEDFE0DD0)
    cases.append(("bad_magic_swapped", bytes(blob)))
    cases.append(("file_empty", b""))
    cases.append(("file_magic_only", struct.pack(">I", FDT_MAGIC)))
    # Mangled block orders (dtc's mangle-layout): valid blobs.
    rsv, st, strings = blocks(base)
    for version in (16, 17):
        for order in ("mts", "mst", "tms", "tsm", "smt", "stm"):
            cases.append((f"mangle-v{version}-{order}", assemble(rsv, st, strings, version=version, order=order)))
    cases.append(("padded-total", assemble(rsv, st, strings, pad_total=64)))
    return cases


def mutations(rng, small_blobs):
    """Truncations at every length, bit flips, smashes, header fields."""
    out = []
    for name, blob in small_blobs:
        for n in range(len(blob)):
            out.append((f"{name}-prefix{n}", blob[:n]))
        # The same, with totalsize claiming exactly the prefix: blocks that
        # run past the end instead of a short file.
        for n in range(40, len(blob), 3):
            b = bytearray(blob[:n])
            put32(b, 4, n)
            out.append((f"{name}-cut{n}", bytes(b)))
    for name, blob in small_blobs:
        for i in range(500):
            b = bytearray(blob)
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                bit = rng.randrange(len(b) * 8)
                b[bit // 8] ^= 1 << (bit % 8)
            out.append((f"{name}-flip{i}", bytes(b)))
        for i in range(150):
            b = bytearray(blob)
            at = rng.randrange(len(b))
            word = rng.choice([0, 1, 2, 3, 4, 9, 0xFFFFFFFF, 0x80000000, rng.getrandbits(32), rng.randrange(256)])
            at -= at % 4
            if at + 4 <= len(b):
                put32(b, at, word)
            out.append((f"{name}-smash{i}", bytes(b)))
        total = len(blob)
        for field in range(10):
            for v in (0, 1, 4, 8, 16, 28, 36, 40, 44, 48, total - 4, total - 1, total, total + 1,
                      0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, rng.getrandbits(32), rng.randrange(total + 8)):
                b = bytearray(blob)
                put32(b, field * 4, v)
                out.append((f"{name}-hdr{field}={v:#x}", bytes(b)))
    return out


# --------------------------------------------------------------------------
# Running the tools


class Runner:
    def __init__(self, kho, dtc, tmp, timeout):
        self.kho, self.dtc, self.tmp, self.timeout = kho, dtc, tmp, timeout
        self.env = dict(os.environ, LC_ALL="C")

    def run(self, argv):
        try:
            r = subprocess.run(argv, capture_output=True, timeout=self.timeout, env=self.env)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired:
            return "timeout", b"", b""

    def write(self, name, blob):
        path = os.path.join(self.tmp, re.sub(r"[^A-Za-z0-9_.=-]", "_", name) + ".dtb")
        with open(path, "wb") as f:
            f.write(blob)
        return path


Result = collections.namedtuple("Result", "ok label detail")


def first_diff(a, b):
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"first difference at byte {n} (sizes {len(a)} vs {len(b)}): {a[max(0, n - 40):n + 40]!r} vs {b[max(0, n - 40):n + 40]!r}"


# Differences between kho and dtc that are known and reported rather than
# failed: (tree name, comparison label suffix) -> why.
KNOWN_DIFFERENCES: dict = {}
# Trees whose content dtc changes, so that dtc's blob is not FdtSw's tree.
DTC_CHANGES_CONTENT = {"name-property"}


def check_tree(runner, name, blob, libfdt_blob):
    """The four comparisons for one well-formed tree. `libfdt_blob` is the
    FdtSw blob to compare `convert --layout libfdt` with, or None."""
    results, notes = [], []
    path = runner.write(name, blob)
    rc, out, err = runner.run([runner.kho, "dt", "check", "-q", path])
    results.append(Result(rc == 0, f"{name}: check", err.decode(errors="replace")))
    if libfdt_blob is not None:
        rc, out, err = runner.run([runner.kho, "dt", "convert", path, "-o", "-", "--layout", "libfdt"])
        results.append(Result(rc == 0 and out == libfdt_blob, f"{name}: convert --layout libfdt == FdtSw",
                              err.decode(errors="replace") if rc else first_diff(out, libfdt_blob)))
    drc, dtb, derr = runner.run([runner.dtc, "-I", "dtb", "-O", "dtb", path])
    if drc == 0:
        rc, out, err = runner.run([runner.kho, "dt", "convert", path, "-o", "-", "--layout", "dtc"])
        results.append(Result(rc == 0 and out == dtb, f"{name}: convert --layout dtc == dtc -O dtb",
                              err.decode(errors="replace") if rc else first_diff(out, dtb)))
        if libfdt_blob is not None and name not in DTC_CHANGES_CONTENT:
            # And back: dtc's blob converted to libfdt's layout is FdtSw's.
            dpath = runner.write(name + "-dtc", dtb)
            rc, out, err = runner.run([runner.kho, "dt", "convert", dpath, "-o", "-", "--layout", "libfdt"])
            results.append(Result(rc == 0 and out == libfdt_blob, f"{name}: dtc blob -> libfdt layout == FdtSw",
                                  err.decode(errors="replace") if rc else first_diff(out, libfdt_blob)))
    drc, dts, derr = runner.run([runner.dtc, "-I", "dtb", "-O", "dts", path])
    if drc == 0:
        rc, out, err = runner.run([runner.kho, "dt", "dump", path])
        results.append(Result(rc == 0 and out == dts, f"{name}: dump == dtc -O dts",
                              err.decode(errors="replace") if rc else first_diff(out, dts)))
    else:
        notes.append(f"{name}: dtc refuses ({first_error_line(derr)}); dump not compared")
    return results, notes


def first_error_line(stderr):
    lines = [l for l in stderr.decode(errors="replace").splitlines() if l.strip()]
    for l in lines:
        if "ERROR" in l or "FATAL" in l or "die" in l or "rror" in l:
            return l.strip()[:160]
    return (lines[-1].strip()[:160] if lines else "no message")


def check_malformed(runner, name, blob):
    """kho must exit 0/1, never crash or hang; dumps must agree when both
    accept. Returns results and, for the summary, the verdict pair."""
    results = []
    path = runner.write(name, blob)
    rc, out, err = runner.run([runner.kho, "dt", "check", "-q", path])
    sane = rc in (0, 1) and (rc == 0 or OFFSET_RE.search(err) is not None)
    results.append(Result(sane, f"{name}: check exits 0/1 (got {rc})", err.decode(errors="replace")[:300]))
    drc, dts, derr = runner.run([runner.dtc, "-I", "dtb", "-O", "dts", path])
    kho_ok, dtc_ok = rc == 0, drc == 0
    if kho_ok and dtc_ok:
        krc, kout, kerr = runner.run([runner.kho, "dt", "dump", path])
        results.append(Result(krc == 0 and kout == dts, f"{name}: dump == dtc -O dts",
                              kerr.decode(errors="replace") if krc else first_diff(kout, dts)))
    kho_msg = err.decode(errors="replace").strip().split(": ", 1)[-1] if not kho_ok else ""
    return results, (name, kho_ok, dtc_ok, kho_msg, first_error_line(derr) if not dtc_ok else
                     " | ".join(l for l in derr.decode(errors="replace").splitlines() if l)[:200])


def kind_of(kho_msg):
    m = re.search(r"offset \d+: ([A-Za-z]+): (.*)", kho_msg)
    if not m:
        return kho_msg[:60]
    message = re.sub(r"\d+", "N", m.group(2))
    message = re.sub(r"0x[0-9a-fA-F]+", "0xN", message)
    return f"{m.group(1)}: {message[:90]}"


# Verdicts on the blobs dtc accepts and kho refuses, by kho's reason.
EXPECTED_STRICTER = [
    ("overlaps", "overlapping blocks: the issue asks for blocks that do not overlap; dtc does not look"),
    ("property after a subnode", "libfdt/spec order; dtc only warns 'subnodes preceding a property'"),
    ("structure block", "dtc ignores size_dt_struct and reads on to totalsize; libfdt's fdt_check_full does not"),
    ("not N-byte aligned", "libfdt requires 8-byte aligned reservation map / 4-byte aligned structure"),
    ("runs into the block", "reservation map overlapping another block: libfdt-level layout check"),
    ("is outside", "block offset inside the header or past the end: libfdt (check_off_) refuses, dtc does not look"),
    ("empty node name", "an empty non-root name cannot be printed back as DTS (dtc prints '/ {')"),
    ("empty property name", "an empty property name cannot be printed back as DTS"),
    ("the root node has a name", "named root: dtc's own test suite expects fdt_check_full to refuse it"),
    ("last compatible version", "libfdt refuses last_comp_version > 17"),
    ("older than N", "libfdt refuses versions < 16; dtc reads v1-v3 formats with full paths"),
    ("FDT_END before any node", "no root node"),
    ("smaller than the header", "totalsize below the header size"),
    ("a second root node", "two roots: dtc's own test suite expects fdt_check_full to refuse it"),
    ("unknown token", "token libfdt does not know"),
    ("FDT_END_NODE without", "unbalanced"),
    ("not allowed in a", "name characters dtc's checks refuse as errors"),
]


def verdict(kho_msg):
    for needle, why in EXPECTED_STRICTER:
        if re.search(needle.replace("N", r"\d+"), kho_msg):
            return "expected (stricter): " + why
    return "UNEXPECTED: judge this case"


# --------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kho", required=True, help="path to the kho executable")
    parser.add_argument("--dtc", default="dtc")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--jobs", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per tool run")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    kho = os.path.abspath(args.kho)
    started = time.monotonic()
    passed, failures, notes = 0, [], []

    known = []

    def account(results):
        nonlocal passed
        for r in results:
            tree, _, what = r.label.partition(": ")
            if not r.ok and (tree, what) in KNOWN_DIFFERENCES:
                known.append(f"{r.label}: {KNOWN_DIFFERENCES[(tree, what)]}")
            elif r.ok:
                passed += 1
            else:
                failures.append(r)

    with tempfile.TemporaryDirectory(prefix="kho-ref-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        runner = Runner(kho, args.dtc, tmp, args.timeout)
        trees = generated_trees(args.seed)
        jobs = [pool.submit(check_tree, runner, name, blob, blob)
                for name, blob in ((n, fdtsw_blob(t)) for n, t in trees)]
        dts = dts_trees(tmp, args.dtc)
        jobs += [pool.submit(check_tree, runner, name, blob, None) for name, blob in dts]
        tree_count = len(jobs)
        for job in jobs:
            results, n = job.result()
            account(results)
            notes += n
        print(f"well-formed trees: {tree_count} ({len(trees)} generated with FdtSw, {len(dts)} compiled from DTS); "
              f"{passed} comparisons passed, {len(failures)} failed; "
              f"{time.monotonic() - started:.1f}s")

        rng = random.Random(args.seed + 1)
        base = fdtsw_blob(Tree(Node("", [("compatible", b"kho-v1\0"), ("p", b"\0\0\0\1"), ("str", b"ab\0cd\0")],
                                    [Node("sub@1", [("reg", b"\0\0\0\1\0\0\0\2"), ("b", b"\1\2\3")],
                                          [Node("leaf", [("e", b"")])])]),
                                [(0x1000, 0x2000)]))
        dtc_layout = subprocess.run([args.dtc, "-I", "dtb", "-O", "dtb", runner.write("base", base)],
                                    capture_output=True, check=True).stdout
        handmade = handmade_malformed(base)
        small = [("base-libfdt", base), ("base-dtc", dtc_layout)]
        blobs = handmade + mutations(rng, small)
        # Duplicates add time, not coverage.
        seen, unique = set(), []
        for name, blob in blobs:
            if blob not in seen:
                seen.add(blob)
                unique.append((name, blob))
        summaries = []
        jobs = [pool.submit(check_malformed, runner, name, blob) for name, blob in unique]
        for job in jobs:
            results, summary = job.result()
            account(results)
            summaries.append(summary)

    by = collections.Counter((k, d) for _, k, d, _, _ in summaries)
    print(f"malformed/mutated blobs: {len(unique)} ({len(handmade)} hand-made, "
          f"{len(unique) - len(handmade)} mutations); kho accepts/dtc accepts: "
          f"both {by[(True, True)]}, kho only {by[(True, False)]}, dtc only {by[(False, True)]}, "
          f"neither {by[(False, False)]}")
    handmade_names = {n for n, _ in handmade}
    print("hand-made blobs (kho / dtc):")
    for name, k, d, kmsg, dmsg in summaries:
        if name in handmade_names:
            print(f"  {name:34} kho {'accepts' if k else 'refuses'}  dtc {'accepts' if d else 'refuses'}"
                  + (f"   kho: {kmsg[:90]}" if not k else "") + (f"   dtc: {dmsg[:80]}" if not d else ""))
    dtc_only = [s for s in summaries if not s[1] and s[2]]
    if dtc_only:
        print("blobs dtc accepts and kho refuses, by kho's reason:")
        groups = collections.defaultdict(list)
        for name, _, _, kmsg, dmsg in dtc_only:
            groups[kind_of(kmsg)].append((name, kmsg, dmsg))
        for reason, items in sorted(groups.items(), key=lambda g: -len(g[1])):
            print(f"  {len(items):4}  {reason}\n        -> {verdict(items[0][1])}\n        e.g. {items[0][0]}"
                  + (f" (dtc warns: {items[0][2][:120]})" if items[0][2] else ""))
            if args.verbose:
                for name, _, dmsg in items[1:]:
                    print(f"        {name}")
    kho_only = [s for s in summaries if s[1] and not s[2]]
    if kho_only:
        reasons = collections.Counter(re.sub(r"\d+|0x[0-9a-f]+", "N", s[4])[:100] for s in kho_only)
        print("blobs kho accepts and dtc refuses, by dtc's reason:")
        for reason, count in reasons.most_common():
            print(f"  {count:4}  {reason}")
    if notes:
        print("trees dtc refuses (dump not compared):")
        for n in notes:
            print("  " + n)
    for k in known:
        print(f"KNOWN DIFFERENCE {k}")
    for r in failures[:40]:
        print(f"FAIL {r.label}\n     {r.detail[:600]}")
    if len(failures) > 40:
        print(f"... and {len(failures) - 40} more failures")
    print(f"time: {time.monotonic() - started:.1f}s")
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


def test_reference():
    """pytest entry point: KHO=path/to/kho pytest Tests/reference/check_reference.py"""
    kho = os.environ.get("KHO", ".build/debug/kho")
    assert main(["--kho", kho]) == 0


if __name__ == "__main__":
    sys.exit(main())
