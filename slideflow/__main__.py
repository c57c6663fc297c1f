"""`python -m slideflow ...` runs the command line (same as the `slideflow` script)."""

from .cli.commands import main

if __name__ == "__main__":
    main()
