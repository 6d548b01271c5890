"""`python -m sublens ...` (e.g. under `accelerate launch -m sublens run ...`): the CLI."""

from sublens.cli import app

if __name__ == "__main__":
    app()
