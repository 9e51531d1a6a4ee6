"""`python -m tunesmith` (and `accelerate launch -m tunesmith train CONFIG`): the command line."""

from tunesmith.cli import app

app()
