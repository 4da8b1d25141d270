"""The `state-manager` console script.

It imports nothing at the top. `serve --workers N` starts each worker with multiprocessing's spawn, which
runs the script of the parent process again inside the worker (as `__mp_main__`): whatever this module
imported there, the whole CLI with typer and rich, would sit in the memory of every worker unused.
"""


def main() -> None:
    from state_manager.cli import app

    app(prog_name="state-manager")
