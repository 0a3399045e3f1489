# mono_quant: the two commands a new machine needs are `make demo` and `make test`.
# Both create .venv, install torch (the CPU build: torch==2.13.0) and the dependencies
# listed in pyproject.toml, and build the C extension in place before running.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
TORCH_SPEC ?= torch==2.13.0
BUILD_DIR := build/dev
ASAN_DIR := build/asan
ASAN_PKG := build/asan-pkg
# The kernel tests that also run under AddressSanitizer + UBSan.
KERNEL_TESTS ?= $(wildcard tests/test_kernels*.py tests/test_int4.py tests/test_linear_kernels.py tests/test_fast_forward.py tests/test_threadpool.py) \
	tests/test_linear_static_kernel.py tests/test_static_packed.py tests/test_observers.py tests/test_gptq_kernels.py tests/test_embedding_kernels.py
PYTEST_ARGS ?=

.PHONY: all venv build browser demo test test-main test-asan wheel clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# Torch first and pinned, so nothing later can pull a CUDA build; then the extras.
$(DEPS_STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) scripts/extras.py test demo safetensors transformers build > $(VENV)/requirements.txt
	$(VPY) -m pip install -q -r $(VENV)/requirements.txt
	touch $@

venv: $(DEPS_STAMP)

# In-place build: the extension lands next to the Python sources (mono_quant/_C.abi3.so), and
# .venv/bin/mono-quant runs the package from this checkout (on the PATH once the venv is active).
build: $(DEPS_STAMP)
	$(VPY) -m cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DPython_EXECUTABLE=$(abspath $(VPY)) > /dev/null
	$(VPY) -m cmake --build $(BUILD_DIR)
	# copy then rename: cp over a loaded extension crashes a process that is using it
	for f in $(BUILD_DIR)/_C*.so; do cp $$f mono_quant/.$$(basename $$f).tmp && mv -f mono_quant/.$$(basename $$f).tmp mono_quant/$$(basename $$f); done
	$(VPY) scripts/dev_command.py $(VENV)/bin/mono-quant

demo: build
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$(CURDIR) $(VPY) -m mono_quant.demo

test: test-main test-asan

test-main: build browser
	MONO_QUANT_REQUIRE_C=1 PYTHONPATH=$(CURDIR) $(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Headless Chromium renders the HTML report in tests/test_browser.py: Debian's package, installed
# here when missing and we are root (as on this project's machines; about 30 s). Anywhere else
# those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get for the browser tests"; \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium >/dev/null; } || echo "could not install chromium: the browser tests will skip"; \
	else echo "chromium is not installed (apt-get install chromium): the browser tests will skip"; fi

# The same kernels built with -fsanitize=address,undefined, run by the kernel tests; any
# report aborts the run.  Python itself is not sanitized, so the runtime is preloaded.
test-asan: $(DEPS_STAMP)
	$(VPY) -m cmake -S . -B $(ASAN_DIR) -G Ninja -DMQ_SANITIZE=ON \
		-DPython_EXECUTABLE=$(abspath $(VPY)) > /dev/null
	$(VPY) -m cmake --build $(ASAN_DIR)
	rm -rf $(ASAN_PKG) && mkdir -p $(ASAN_PKG)
	cp -r mono_quant $(ASAN_PKG)/ && rm -f $(ASAN_PKG)/mono_quant/_C*.so
	cp $(ASAN_DIR)/_C*.so $(ASAN_PKG)/mono_quant/
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	MONO_QUANT_REQUIRE_C=1 MONO_QUANT_EXPECT_ROOT=$(abspath $(ASAN_PKG)) PYTHONPATH=$(abspath $(ASAN_PKG)) \
		$(VENV)/bin/pytest -q -p no:cacheprovider $(KERNEL_TESTS)

# A wheel as users get it from `pip install .` (abi3: one wheel for CPython >= 3.10).
wheel: $(DEPS_STAMP)
	$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w build/wheel .

clean:
	rm -rf build mono_quant/_C*.so
