"""The `suparag` command line."""
