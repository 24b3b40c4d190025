# The two entry points the README gives; both install the build prerequisites first.
.PHONY: deps demo test bench

deps:
	@scripts/install-deps

# Run the gateway on the shipped demo config with built-in echo upstreams.
demo: deps
	cargo run --release -- demo

# Unit and end-to-end tests.
test: deps
	cargo test

bench: deps
	cargo bench
