# The two entry points the README gives; both install the build prerequisites first.
.PHONY: deps demo test bench

deps:
	@scripts/install-deps

# Run the gateway on the shipped demo config with built-in echo upstreams.
demo: deps
	cargo run --release -- demo

# Unit and end-to-end tests; the alert rules checked and unit-tested by promtool; the unit tests
# of the vendored Pingora crates whose patches change or add to their own tests, and of
# pingora-proxy's task pipe (docs/pingora-patches.md).
test: deps
	promtool check rules conf/prometheus/alerts.yaml
	promtool test rules conf/prometheus/alerts.test.yaml
	cargo test
	for crate in pingora-pool pingora-http; do \
		cargo test --locked --manifest-path vendor/$$crate/Cargo.toml \
			--target-dir "$${CARGO_TARGET_DIR:-target}/vendor-tests" || exit 1; \
	done
	# pingora-core's protocol tests (patches 9-11, 17, 19, 20 change the HTTP/1 sessions), built
	# against the vendored pingora-http and pingora-pool as the gateway is; the connector tests
	# are left out: they dial hosts on the internet.
	cargo test --locked --manifest-path vendor/pingora-core/Cargo.toml \
		--config 'patch.crates-io.pingora-http.path="vendor/pingora-http"' \
		--config 'patch.crates-io.pingora-pool.path="vendor/pingora-pool"' \
		--target-dir "$${CARGO_TARGET_DIR:-target}/vendor-tests" --lib -- protocols
	# pingora-proxy's own tests need a large set of dev-dependencies; the task pipe (patch 12)
	# depends on std alone, so its tests are built and run by themselves.
	mkdir -p "$${CARGO_TARGET_DIR:-target}/vendor-tests"
	rustc --edition 2021 --test vendor/pingora-proxy/src/pipe.rs \
		-o "$${CARGO_TARGET_DIR:-target}/vendor-tests/pingora-proxy-pipe"
	"$${CARGO_TARGET_DIR:-target}/vendor-tests/pingora-proxy-pipe"

bench: deps
	cargo bench
