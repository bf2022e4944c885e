"""Request plugins: one module each; the module's name is the plugin's config key and label."""
