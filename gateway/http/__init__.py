"""HTTP pieces both listeners share: the server and its head deadline, headers, client address."""
