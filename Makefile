# swift-kho: `make demo` runs the main demo, `make test` the tests.
# Both install what they need first (Scripts/deps.sh, idempotent).

SWIFT ?= swift
PYTHON ?= python3
KHO := .build/debug/kho

.PHONY: all deps build demo test unit reference bench fuzz format clean

all: build

deps:
	@Scripts/deps.sh

build: deps
	$(SWIFT) build

demo: build
	@KHO=$(KHO) Scripts/demo-dt.sh

# Unit and integration tests (Swift Testing), then the checks against the
# reference tools (dtc, pylibfdt).
test: build
	$(SWIFT) test
	$(PYTHON) Tests/reference/check_reference.py --kho $(KHO)

bench: deps
	$(SWIFT) run -c release fdt-bench

fuzz: deps
	Scripts/fuzz.sh

format:
	$(SWIFT) format -i -r Sources Tests Package.swift

clean:
	rm -rf .build
