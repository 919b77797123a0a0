"""Alembic migrations: the only thing that creates or changes the job database's schema."""
