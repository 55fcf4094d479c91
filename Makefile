# vpn-firewall: build, install, test. Run as root for deb-deps, test-deps, test, demo.
PACKAGE  := vpn-firewall
VERSION  := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DESTDIR  ?=
PYTHON   ?= /usr/bin/python3
BUILD    := build
DEB      := $(PACKAGE)_$(VERSION)_all.deb

BUILD_DEPS := debhelper dh-python python3 python3-docutils dpkg-dev fakeroot lintian
DEMO_DEPS  := python3 iptables iproute2 openvpn openssl tcpdump util-linux
TEST_DEPS  := $(BUILD_DEPS) $(DEMO_DEPS) ferm python3-pytest python3-pytest-xdist python3-hypothesis \
              python3-pyflakes mmdebstrap systemd-container dnsmasq-base busybox nftables stress-ng
# without their recommends: wireguard-tools would bring a whole kernel image
TEST_DEPS_NO_RECOMMENDS := wireguard-tools wireguard-go ocserv openconnect vpnc-scripts nebula \
                           prometheus-node-exporter dbus-daemon libglib2.0-bin python3-dbus python3-gi
BENCH_DEPS := $(DEMO_DEPS) ferm iperf3 gcc libc6-dev

LIB_FILES := usr/lib/vpn-firewall/vpn-firewall $(wildcard usr/lib/vpn-firewall/vpnfw/*.py)
MANPAGES  := $(BUILD)/man/vpn-firewall.8 $(BUILD)/man/vpn-firewall.conf.5

.PHONY: all man install deb deb-deps test-deps demo-deps bench-deps test test-unit lint demo bench clean

all: man

man: $(MANPAGES)

$(BUILD)/man/%: man/%.rst
	@mkdir -p $(@D)
	rst2man --strict $< > $@

install: man
	install -d $(DESTDIR)/usr/lib/vpn-firewall/vpnfw $(DESTDIR)/usr/sbin \
	    $(DESTDIR)/etc/vpn-firewall $(DESTDIR)/lib/systemd/system $(DESTDIR)/lib/systemd/system-generators \
	    $(DESTDIR)/usr/share/bash-completion/completions
	install -m 0755 usr/lib/vpn-firewall/vpn-firewall $(DESTDIR)/usr/lib/vpn-firewall/
	install -m 0644 usr/lib/vpn-firewall/vpnfw/*.py $(DESTDIR)/usr/lib/vpn-firewall/vpnfw/
	# --version says what debian/changelog says
	sed -i 's/^VERSION = .*/VERSION = "$(VERSION)"/' $(DESTDIR)/usr/lib/vpn-firewall/vpnfw/__init__.py
	ln -sf ../lib/vpn-firewall/vpn-firewall $(DESTDIR)/usr/sbin/vpn-firewall
	install -m 0644 etc/vpn-firewall/*.conf $(DESTDIR)/etc/vpn-firewall/
	install -m 0644 lib/systemd/system/vpn-firewall.service lib/systemd/system/vpn-firewall-guard.service \
	    lib/systemd/system/vpn-firewall-refresh.service \
	    lib/systemd/system/vpn-firewall-refresh.timer lib/systemd/system/vpn-firewall-client-configs.path \
	    lib/systemd/system/vpn-firewall-client-configs.service lib/systemd/system/vpn-firewall-prometheus.service \
	    lib/systemd/system/vpn-firewall-prometheus.timer lib/systemd/system/vpn-firewall-monitor.service \
	    $(DESTDIR)/lib/systemd/system/
	install -d $(DESTDIR)/usr/lib/systemd/user
	install -m 0644 usr/lib/systemd/user/vpn-firewall-notify.service $(DESTDIR)/usr/lib/systemd/user/
	install -m 0755 lib/systemd/system-generators/vpn-firewall-bypass-generator \
	    $(DESTDIR)/lib/systemd/system-generators/
	install -m 0644 usr/share/bash-completion/completions/vpn-firewall \
	    $(DESTDIR)/usr/share/bash-completion/completions/

# Installs what building needs when run as root and something is missing.
deb-deps:
	@missing=$$(for p in $(BUILD_DEPS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_FLAGS) $$missing; \
	    else echo "missing build dependencies: $$missing (run as root to install them)"; exit 1; fi; \
	fi

test-deps:
	@$(MAKE) --no-print-directory deb-deps BUILD_DEPS="$(TEST_DEPS)"
	@$(MAKE) --no-print-directory deb-deps BUILD_DEPS="$(TEST_DEPS_NO_RECOMMENDS)" APT_FLAGS=--no-install-recommends
	@# the tests run their own exporter in a namespace; none on this machine's own network
	@if [ -d /run/systemd/system ]; then systemctl disable --now prometheus-node-exporter.service 2>/dev/null || true; fi

demo-deps:
	@$(MAKE) --no-print-directory deb-deps BUILD_DEPS="$(DEMO_DEPS)"

bench-deps:
	@$(MAKE) --no-print-directory deb-deps BUILD_DEPS="$(BENCH_DEPS)"

# Builds in a copy of the tree so nothing is written outside build/; then the versioned
# .deb and a plain vpn-firewall.deb copy land here, for 'apt install ./vpn-firewall.deb'.
deb: deb-deps
	rm -rf $(BUILD)/pkg && mkdir -p $(BUILD)/pkg/$(PACKAGE)-$(VERSION)
	# a git checkout: its files; a release tarball (no .git): the whole tree
	if [ -d .git ] && git rev-parse --git-dir >/dev/null 2>&1; then \
	    git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} $(BUILD)/pkg/$(PACKAGE)-$(VERSION)/; \
	else \
	    tar --exclude=./$(BUILD) --exclude='./$(PACKAGE)*.deb' -cf - . | tar -C $(BUILD)/pkg/$(PACKAGE)-$(VERSION) -xf -; \
	fi
	cd $(BUILD)/pkg/$(PACKAGE)-$(VERSION) && dpkg-buildpackage -us -uc -b
	cp $(BUILD)/pkg/$(DEB) $(DEB)
	cp $(DEB) $(PACKAGE).deb
	@echo "built $(DEB) (and $(PACKAGE).deb)"

# pyflakes, then lintian and systemd-analyze verify/security on the built package's tree.
lint: deb
	$(PYTHON) -m pyflakes usr/lib/vpn-firewall/vpnfw usr/lib/vpn-firewall/vpn-firewall tests bench
	VPN_FIREWALL_DEB=$(CURDIR)/$(DEB) $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_package.py

test-unit:
	$(PYTHON) -m pytest -q tests/test_language.py tests/test_cli.py tests/test_running.py tests/test_fuzz.py tests/test_pure.py

# Every layer: language, kernel in namespaces, ferm, fail-closed, package + lintian, boot.
# Side by side first (each test has its own namespaces and state), then the tests that
# measure time, alone.
TEST_WORKERS ?= 8
test: test-deps deb
	$(PYTHON) -m pyflakes usr/lib/vpn-firewall/vpnfw usr/lib/vpn-firewall/vpn-firewall tests bench
	VPN_FIREWALL_DEB=$(CURDIR)/$(DEB) $(PYTHON) -m pytest -v -p no:cacheprovider -n $(TEST_WORKERS) --durations=15 -m "not alone" tests
	VPN_FIREWALL_DEB=$(CURDIR)/$(DEB) $(PYTHON) -m pytest -v -p no:cacheprovider --durations=5 -m alone tests

# The main job, shown safely: a real OpenVPN in network namespaces, the VPN client killed.
demo: demo-deps
	$(PYTHON) tests/demo.py

# Start time and scale against bare iptables-restore and ferm, tunnel throughput (ratios).
bench: bench-deps
	$(PYTHON) bench/bench.py

clean:
	rm -rf $(BUILD) $(PACKAGE)_*_all.deb $(PACKAGE).deb
