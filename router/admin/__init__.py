"""The admin surface: API, status page, CLI client."""
