"""Persistence: durable files on disk and the SQL index (SQLite by default, PostgreSQL to share)."""
