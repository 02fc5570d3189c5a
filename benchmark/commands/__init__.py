"""One module per command: each adds its subparser (`add(sub)`) and holds what only it uses."""
