# Every target sets up what it needs first (see scripts/dev.sh).
.PHONY: setup demo test lab lint clean

setup:
	scripts/dev.sh setup

demo:
	scripts/dev.sh demo

test:
	scripts/dev.sh test

# make lab                        JupyterLab on 127.0.0.1 in notebooks/
# make lab SANDBOX=1              ... with the incident lab, runbooks on it
# make lab INCIDENT=pool-exhausted   ... with the lab in that incident
lab:
	scripts/dev.sh lab $(if $(SANDBOX),--sandbox) \
		$(foreach incident,$(INCIDENT),--incident $(incident))

lint: setup
	.venv/bin/ruff check paracle_nb tests bench
	.venv/bin/mypy paracle_nb

clean:
	rm -rf artifacts .sandbox .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
bench:
	scripts/dev.sh bench
