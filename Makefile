# The README's two commands: `make run` and `make test`. Both install what
# they need first (scripts/install-deps.sh, idempotent).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: all deps build install deb run run-mount test test-unit test-fs test-vm test-pkg bench seccompbench guestbench parbench seqbench bootbench imagebench diskbench pullbench systemdbench netbench execbench clonebench streambench fuzz fuzz-corpus clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Installs ocivm, its man pages, bash completion, docs and the demo image
# under $(DESTDIR)$(PREFIX); builds only what it installs.
PREFIX ?= /usr/local
install: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target installables
	@DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# The Debian package: dpkg-buildpackage -us -uc -b on a copy of the tree;
# the .deb lands in $(BUILD)/deb.
deb: deps
	@scripts/build-deb.sh $(BUILD)/deb

# Imports the offline demo image (Debian's busybox-static, packed as an OCI
# layout by `make build`) into the store, boots it as a VM and runs a
# command in it.
run: build
	@$(BUILD)/ocivm image import oci:$(BUILD)/demo-oci --name demo >/dev/null
	@$(BUILD)/ocivm run --rm demo -- sh -c 'uname -r; cat /etc/os-release; id'

# The host-mount demo: mount a directory with `ocivm mount`, list, unmount.
run-mount: build
	@scripts/demo-mount.sh $(BUILD)/ocivm

# Tests build with warnings as errors (CI too); `make build` does not.
test: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) -DOCIVM_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-unit: build
	@cd $(BUILD) && ctest --output-on-failure -L unit

test-fs: build
	@cd $(BUILD) && ctest --output-on-failure -L fs

test-vm: build
	@cd $(BUILD) && ctest --output-on-failure -L vm

test-pkg: build
	@cd $(BUILD) && ctest --output-on-failure -L pkg

# fsbench twice: on a quiet machine, then with two busy-loop processes
# competing for the CPUs during every timed phase (its tables say CONTENDED).
bench: build
	@$(BUILD)/fsbench --ocivm $(BUILD)/ocivm
	@$(BUILD)/fsbench --ocivm $(BUILD)/ocivm --contend 2

seccompbench: build
	@$(BUILD)/seccompbench

guestbench: build
	@bench/guestbench.sh $(BUILD)/ocivm

# 4 guest readers' latency while a writer's fsync runs, against the C
# virtiofsd (FSD_THREAD_POOL_SIZE=N passes --thread-pool-size to ocivm fsd).
parbench: build
	@bench/parbench.sh $(BUILD)/ocivm

# Sequential 1 GiB write and read in a VM, with and without the writeback
# cache, ocivm fsd against the C virtiofsd (SIZE_MB=, BS=, ROUNDS= to change).
seqbench: build
	@bench/seqbench.sh $(BUILD)/ocivm

bootbench: build
	@bench/bootbench.sh $(BUILD)/ocivm $(BUILD)/demo

# -p throughput guest -> host: --network passt against QEMU's user network
# (slirp, hostfwd) on the same image (SIZE_MB=, FETCHES=, ROUNDS= to change).
netbench: build
	@bench/netbench.sh $(BUILD)/ocivm $(BUILD)/demo

# ocivm exec into a detached VM against a fresh run, then netbench
execbench: build
	@bench/execbench.sh $(BUILD)/ocivm $(BUILD)/demo

# Snapshots and clones (issue 12): restore-to-exec, clones' memory, boot snapshots.
clonebench: build
	@bench/clonebench.sh $(BUILD)/ocivm $(BUILD)/demo

# -v over the stream transport (snapshot-capable VMs) against vhost-user.
streambench: build
	@bench/streambench.sh $(BUILD)/ocivm $(BUILD)/demo

imagebench: build
	@bench/imagebench.sh $(BUILD)/ocivm

diskbench: build
	@bench/diskbench.sh $(BUILD)/ocivm

pullbench: build
	@bench/pullbench.sh $(BUILD)/ocivm

# Issue 10's bcvk case: a debootstrap'd Debian systemd root booted over
# virtio-fs to multi-user.target, ocivm fsd against the C virtiofsd, and
# `ocivm run --systemd`. Needs the Debian mirror (debootstrap), as root.
systemdbench: build
	@bench/systemdbench.sh $(BUILD)/ocivm

# Fuzzing (issue 15, tests/fuzz/README.md): the libFuzzer targets, built with
# clang and ASan/UBSan in their own build dir, each run for FUZZ_SECONDS on a
# copy of its seed corpus; fails when any target finds a crash or a hang.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= fuse_server_fuzz virtqueue_fuzz vhost_user_fuzz oci_parse_fuzz tar_unpack_fuzz

fuzz: deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DOCIVM_FUZZ=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	@tests/fuzz/run_fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Regenerates the committed seed corpus (tests/fuzz/make_corpus.cpp).
fuzz-corpus: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target fuzz_make_corpus
	@rm -rf tests/fuzz/corpus && $(BUILD)/tests/fuzz/fuzz_make_corpus tests/fuzz/corpus

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)
