"""Shared pieces of the benchmarks under tools/: the registry behind `python -m tools.bench`
(registry.py), timing (timing.py), result records as JSON lines (records.py), markdown
tables (tables.py) and the models they run (models.py).

The scripts put tools/ on sys.path and import `benchkit` as a top-level package, as they
import `corpus` and `thirdparty`."""
