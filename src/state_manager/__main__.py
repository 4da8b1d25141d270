"""`python -m state_manager …` is `state-manager …`."""

from state_manager.command import main

main()
