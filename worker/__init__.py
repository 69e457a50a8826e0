"""suparag runtime: database access, migrations, the local stack and the workers."""

__version__ = "0.1.0"
