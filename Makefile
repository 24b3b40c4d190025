# The two entry points the README gives; both install the build prerequisites first.
.PHONY: deps demo test bench

deps:
	@scripts/install-deps

# Run the gateway on the shipped demo config with built-in echo upstreams.
demo: deps
	cargo run --release -- demo

# Unit and end-to-end tests; the alert rules checked and unit-tested by promtool.
test: deps
	promtool check rules conf/prometheus/alerts.yaml
	promtool test rules conf/prometheus/alerts.test.yaml
	cargo test

bench: deps
	cargo bench
