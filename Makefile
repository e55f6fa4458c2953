# Every target sets up what it needs first (see scripts/dev.sh).
.PHONY: setup demo test lint clean

setup:
	scripts/dev.sh setup

demo:
	scripts/dev.sh demo

test:
	scripts/dev.sh test

lint: setup
	.venv/bin/ruff check paracle_nb tests
	.venv/bin/mypy paracle_nb

clean:
	rm -rf artifacts .sandbox .pytest_cache .mypy_cache .ruff_cache
