"""The benchmarks behind `scripts/benchmark.py`, one module per subcommand, each with the same two
functions: `add_command(commands)` adds its argparse subparser (which sets `run` and `table`, the row keys
it prints) and `run(args)` measures and returns the JSON-able results it writes, with a "results" list of
rows. `common` holds what several of them share. The modules import the scripts' helpers (`_cli`,
`_threads`, `_allocator`), so they run with scripts/ on sys.path, as scripts/benchmark.py and pytest have
it. The JSON files beside them are the results the docs cite.
"""
