"""`python -m pipeline.history`: kept as a command name; the code is pipeline/nightly/history.py."""
from pipeline.nightly.history import main

if __name__ == "__main__":
    main()
