#!/usr/bin/env python3
"""Lists public declarations without a `///` doc comment in the library
modules (what DocC would show undocumented). Exits 1 if any is found and
--check is given.

  python3 Scripts/undocumented.py [--check] [MODULE...]
"""
import os
import re
import sys

LIBRARIES = ["FDT", "KHOSystem", "KHO", "KHORuntime", "KHOControlFS", "KHOServiceControl",
             "KHOServiceLifecycle", "KHOCacheStore", "KHOCollections"]
DECL = re.compile(r"^\s*(?:@[\w()., :]+\s+)*(?:public|open)\s+(?:(?:static|final|override|"
                  r"mutating|nonmutating|convenience|required|indirect|nonisolated)\s+)*"
                  r"(func|var|let|init|subscript|struct|class|enum|protocol|typealias|case|"
                  r"actor|extension)\b")


def undocumented(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found = []
    for i, line in enumerate(lines):
        m = DECL.match(line)
        if not m or m.group(1) == "extension":
            continue
        j = i - 1
        while j >= 0 and (lines[j].strip().startswith("@") or lines[j].strip() == ""):
            if lines[j].strip() == "":
                break
            j -= 1
        if j >= 0 and lines[j].strip().startswith("///"):
            continue
        # Conformance requirements whose meaning the protocol documents.
        if re.search(r"\b(var description|func hash\(into|static func ==|init\(rawValue|"
                     r"let rawValue|var rawValue|func makeIterator|func next\(\)|"
                     r"var errorDescription|func run\(\) async)", line):
            continue
        found.append((i + 1, line.strip()))
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv
    modules = args or LIBRARIES
    total = 0
    for module in modules:
        root = os.path.join("Sources", module)
        if not os.path.isdir(root):
            continue
        for directory, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if not name.endswith(".swift"):
                    continue
                path = os.path.join(directory, name)
                for line, text in undocumented(path):
                    print(f"{path}:{line}: {text}")
                    total += 1
    print(f"{total} public declarations without a /// comment", file=sys.stderr)
    return 1 if check and total else 0


if __name__ == "__main__":
    sys.exit(main())
