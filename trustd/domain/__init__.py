"""Domain values shared by every layer: enums and records that services return and the API
renders. No I/O here."""
