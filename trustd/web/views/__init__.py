"""The UI's views, one module per domain."""
