# The two commands: `make run` boots the image with a shell; `make test` runs
# every test. Both install what they need on a fresh Debian machine.

CARGO       ?= cargo
TARGET      := x86_64-unknown-linux-gnu
TARGET_DIR  ?= $(or $(CARGO_TARGET_DIR),target)
BINS        := $(TARGET_DIR)/$(TARGET)/release
BUILD       := build
IMAGE       ?= $(or $(LAB_IMAGE_DIR),$(BUILD)/image)
KERNEL_DIR  := $(BUILD)/kernel
APT_PACKAGES := qemu-system-x86 busybox-static cpio gdisk device-tree-compiler xz-utils e2fsprogs

.PHONY: all deps image run test check bench faults fuzz clean

all: image

# Debian packages the image and the lab need. Installed only when missing.
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Static guest binaries, Debian's kernel (fetched into $(KERNEL_DIR) once),
# and the initramfs built from initfs/manifest.toml.
image: deps
	$(CARGO) build --release --workspace --bins
	$(BINS)/initfs-build kernel --cache $(KERNEL_DIR)
	$(BINS)/initfs-build image --manifest initfs/manifest.toml --bins $(BINS) \
		--kernel-cache $(KERNEL_DIR) --out $(IMAGE)

run: image
	$(BINS)/vm-run

# Host tests (protocol, parsing, the scheme runtime on a real FUSE mount),
# then the QEMU scenarios in tests/lab, which boot the image.
test: image
	$(CARGO) test --release --workspace -- --include-ignored

# Our drivers against Linux's on identical devices in one VM: prints ratios.
bench: image
	$(BINS)/lab-bench

# The long fault campaign: faults injected in and around the drivers under
# load; prints what clients saw (see tests/lab/src/faults.rs).
faults: image
	$(BINS)/lab-faults $(FAULT_ARGS)

# The long scheme-fuzzer campaign: root and an ordinary user making random
# calls on every scheme at once; prints its totals (see tests/lab/src/fuzz.rs).
fuzz: image
	$(BINS)/lab-fuzz $(FUZZ_ARGS)

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	rm -rf $(BUILD) target/lab
	$(CARGO) clean
