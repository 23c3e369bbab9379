"""`python -m exospherehost.cli`: the same as the `exosphere` command."""

from exospherehost.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports the parent's main
    main()
