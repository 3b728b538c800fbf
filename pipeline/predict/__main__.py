import sys

from pipeline.predict.classify import main

sys.exit(main())
