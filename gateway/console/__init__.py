"""The operator console on the admin listener: login, sessions, CSRF and the static app."""
