"""Request plugins, one module each: found by the registry (gateway.config.registry), each module
registers its plugin class, whose name is its config key, metric and log label."""
