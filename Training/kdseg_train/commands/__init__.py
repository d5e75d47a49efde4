"""``kdseg-train`` subcommands, one module each; every module exposes ``register(subparsers)``."""
