"""The operator console: login, sessions, CSRF, and the pages in a real browser."""
