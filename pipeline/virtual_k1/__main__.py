from pipeline.virtual_k1.manage import main

main()
