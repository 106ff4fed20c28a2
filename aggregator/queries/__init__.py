"""SQL, one module per query, built in one place and tested as strings."""
