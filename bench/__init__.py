"""Benchmarks that print figures measured in one run: `suparag bench ...`, `python -m bench.X`."""
