.PHONY: fmt lint test build release

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy -j2 --workspace --all-targets -- -D warnings

test:
	scripts/test

build:
	cargo build -j2 --workspace

release:
	cargo build -j2 --release --bin starling
