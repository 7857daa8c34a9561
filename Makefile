# Osmosis: `make demo` runs everything locally, `make test` runs the whole suite.
.PHONY: demo test lint build bench kafka-up kafka-down

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build --workspace --bins --examples

bench:
	scripts/bench.sh

kafka-up:
	scripts/kafka.sh up

kafka-down:
	scripts/kafka.sh down
