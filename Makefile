.PHONY: setup rehearsal test bench
setup:      ## install Debian packages and .venv
	bash scripts/setup.sh
rehearsal:  ## the main job
	bash scripts/rehearsal.sh
test:       ## the test command (installs and starts what the tests need)
	bash scripts/test.sh
bench:      ## every benchmark, with its figures
	bash scripts/bench.sh
