"""Command-line interface: one module per subcommand, each registering itself in ``main``."""
