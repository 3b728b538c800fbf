"""`python -m pipeline.report`: kept as a command name; the code is pipeline/bench/report.py."""
from pipeline.bench.report import main

if __name__ == "__main__":
    main()
