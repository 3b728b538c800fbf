from pipeline.nightly.run import main

main()
