"""HTTP both listeners share: the server and its head deadline, canonical paths, headers."""
