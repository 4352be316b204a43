"""Subcommands of `atl`, one module per area; each has `register(subparsers)`."""
