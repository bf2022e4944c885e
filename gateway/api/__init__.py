"""What the admin API and the data plane's JSON endpoints share: bodies, bounds, record views."""
