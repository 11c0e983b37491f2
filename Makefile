# swift-kho: `make demo` runs the main demo, `make test` the tests.
# Both install what they need first (Scripts/deps.sh, idempotent).

SWIFT ?= swift
PYTHON ?= python3
KHO := .build/debug/kho

.PHONY: docs all deps build demo demo-dt test bench bench-upgrade bench-memcslap fuzz format clean

all: build

deps:
	@Scripts/deps.sh

build: deps
	$(SWIFT) build

# The live upgrade of kho-cache, next to what a cold restart loses.
demo: build
	@Scripts/demo.sh

# A tour of `kho dt` on a blob the project generates.
demo-dt: build
	@KHO=$(KHO) Scripts/demo-dt.sh

# Unit and integration tests (Swift Testing, real memfds, execs, FUSE
# mounts and sockets), then the checks against the reference tools (dtc,
# pylibfdt, memcached clients) and the command line end to end.
test: build
	$(SWIFT) test
	$(PYTHON) Tests/reference/check_reference.py --kho $(KHO)
	$(PYTHON) Tests/cache/test_protocol.py --server .build/debug/kho-cache
	$(PYTHON) Tests/clients/test_clients.py --server .build/debug/kho-cache --kho $(KHO)
	$(PYTHON) Tests/cache/test_meta.py --server .build/debug/kho-cache
	$(PYTHON) Tests/cache/test_stats.py --server .build/debug/kho-cache
	$(PYTHON) Tests/cache/test_hostile.py --server .build/debug/kho-cache
	$(PYTHON) Tests/cache/test_upgrade.py --server .build/debug/kho-cache --kho $(KHO)
	$(PYTHON) Tests/cache/test_meta_upgrade.py --server .build/debug/kho-cache --kho $(KHO)
	$(PYTHON) Tests/cache/test_bad_handover.py --server .build/debug/kho-cache --kho $(KHO)
	$(PYTHON) Tests/cache/test_hitless.py --server .build/debug/kho-cache --kho $(KHO)
	bash Tests/cli/test_cli.sh
	$(PYTHON) Tests/cli/test_run.py --kho $(KHO)
	$(PYTHON) Tests/cache/test_crash.py --server .build/debug/kho-cache --kho $(KHO)
	bash Tests/deploy/test_units.sh .build/debug
	bash Scripts/docs.sh
	$(PYTHON) Tests/sessions/test_sessions.py --server .build/debug/kho-sessions --kho $(KHO)

bench: deps
	$(SWIFT) run -c release fdt-bench

# The Swift runtime linked statically, as production binaries should be:
# an in-place upgrade waits for the next image's start-up (BENCHMARKS.md).
bench-upgrade: deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static --product kho-cache
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static --product kho
	$(PYTHON) Scripts/bench_upgrade.py --kho-cache .build-static/release/kho-cache --kho .build-static/release/kho

# kho-cache beside memcached under the project's C load generator
# (Benchmarks/loadgen): GET/SET/mixed, 3 value sizes, -t 1 and 4, pipelined.
.PHONY: bench-throughput
bench-throughput: deps
	$(SWIFT) build -c release --product kho-cache
	$(PYTHON) Scripts/bench_throughput.py --kho-cache .build/release/kho-cache

# Every libFuzzer target (FUZZ_TARGET=fdt|memcache|fuse for one), each for
# FUZZ_TIME seconds.
fuzz: deps
	Scripts/fuzz.sh $(or $(FUZZ_TARGET),all) $(or $(FUZZ_TIME),60)

format:
	$(SWIFT) format -i -r Sources Tests Package.swift

clean:
	rm -rf .build

# kho-cache beside memcached under memcslap (C, libmemcached-tools).
bench-memcslap: deps
	$(SWIFT) build -c release --product kho-cache
	$(PYTHON) Scripts/bench_memcslap.py --kho-cache kho-cache=.build/release/kho-cache

# The DocC documentation of every library module, warnings as errors.
docs:
	bash Scripts/docs.sh
# kho-sessions (Hummingbird) under wrk across upgrades, release build.
.PHONY: bench-sessions
bench-sessions: deps
	$(SWIFT) build -c release --product kho-sessions
	$(SWIFT) build --product kho
	$(PYTHON) Tests/sessions/test_sessions.py --server .build/release/kho-sessions --kho $(KHO) --wrk-seconds 15 --wrk-upgrades 0 wrk
	$(PYTHON) Tests/sessions/test_sessions.py --server .build/release/kho-sessions --kho $(KHO) --wrk-seconds 15 --wrk-upgrades 4 wrk

# The arena collections against Dictionary, Deque and Array (ns/op), release build.
.PHONY: bench-collections
bench-collections:
	$(SWIFT) build -c release --product collections-bench
	.build/release/collections-bench
