"""Request plugins, one module each: found by the registry (gateway.config.registry), each module
registers its plugin class under its name, which is the module's name too."""
