"""`python -m state_manager …` is `state-manager …`."""

from state_manager.cli import app

app(prog_name="state-manager")
