"""``python -m layercache``: the same command line as the ``layercache`` script."""

from layercache.cli import main

if __name__ == "__main__":
    main()
