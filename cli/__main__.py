from smt_convert.main import main

main()
