"""``python -m jaxpenalties.demo``: runs the demo (see :mod:`jaxpenalties.demo`)."""

from jaxpenalties.demo._experiment import main

if __name__ == "__main__":
    main()
