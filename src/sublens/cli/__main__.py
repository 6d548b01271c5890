"""`python -m sublens.cli ...` (e.g. under `accelerate launch -m sublens.cli run ...`): the CLI."""

from sublens.cli import app

if __name__ == "__main__":
    app()
