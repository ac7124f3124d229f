from computesdkd.cli import main

main()
