"""`python -m gatgan.cli ...`, the form torchrun, SLURM scripts and the tests launch."""

from . import main

if __name__ == "__main__":
    main()
