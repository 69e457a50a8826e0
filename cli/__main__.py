"""`python -m cli ...`: the same as `suparag ...`; how `suparag dev` and the
benchmarks start `suparag worker` (see `cli._common.cli_command`)."""

from cli.main import main

if __name__ == "__main__":
    main()
